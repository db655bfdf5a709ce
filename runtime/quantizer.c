/* Quantizer nodes to kernel quantizer descriptions (see quantizer.h). */
#include "quantizer.h"

int qt_quantizer_from_node(struct qt_quant_attrs *a, struct qt_apot_quantizer *qz,
                           const struct qt_node *n, struct qt_error *e)
{
    qz->n = 0;
    if (qt_quant_attrs_get(n, a, e)) return -1;
    if (a->scheme >= QT_QS_MAX) return 0;
    int rc = qt_apot_quantizer_init(
        qz, a->scheme == QT_QS_APOT ? QT_SCHEME_APOT : QT_SCHEME_UNIFORM, a->bits, a->is_signed);
    if (rc)
        return qt_err(e, "%s node '%s': %s", qt_op_name(n->op), n->name, qt_apot_error_string(rc));
    return 0;
}
