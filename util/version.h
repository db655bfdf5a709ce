/* qtune's version, written into every model it saves. */
#ifndef QT_VERSION_H
#define QT_VERSION_H

#define QT_VERSION "0.1"

#endif
