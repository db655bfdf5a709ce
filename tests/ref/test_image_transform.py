"""Images of any size through qtune's evaluation transform (`--resize R --crop S`) against
torchvision's Resize(R) + CenterCrop(S) + ToTensor on images its ImageFolder loader opens
(PIL, converted to RGB): a generated ImageNet-layout folder (train/ and val/, one folder per
class) of JPEG and PNG files, RGB, grayscale and CMYK (JPEG), of varied sizes and aspect ratios, larger
and smaller than the crop. `qtune run` of a model that passes its input through (a ReLU of
non-negative values) writes the tensors qtune feeds a model, named in y.txt; each must be
within a mean absolute difference of 1/255 and a maximum of 8/255 of torchvision's."""
import io
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

PIL = pytest.importorskip("PIL.Image")
transforms = pytest.importorskip("torchvision.transforms")
datasets = pytest.importorskip("torchvision.datasets")

# (78, 72), (86, 80), (134, 128): crops whose offset is a half rounded to even; (300, 2) and
# (2, 300): slivers whose long side is resized to thousands of pixels
SIZES = [(500, 375), (375, 500), (64, 48), (33, 97), (256, 256), (40, 300), (31, 29), (97, 33),
         (78, 72), (72, 78), (86, 80), (134, 128), (300, 2), (2, 300)]


def passthrough_model(path, s):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, s, s])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, s, s])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "pass", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)


def image(rng, w, h, gray):
    """A smooth pattern with noise (JPEG's blocks and the filters both matter)."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = [127 + 100 * np.sin(xx / (3 + 5 * k) + yy / (7 + 3 * k)) for k in range(3)]
    px = np.stack(base, -1) + rng.normal(0, 20, (h, w, 3))
    px = np.clip(px, 0, 255).astype(np.uint8)
    return PIL.fromarray(px[..., 0] if gray else px, "L" if gray else "RGB")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet_like")
    rng = np.random.default_rng(3)
    k = 0
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            d = root / split / cls
            d.mkdir(parents=True)
            for w, h in SIZES:
                img = image(rng, w, h, gray=k % 3 == 2)
                fmt = "JPEG" if k % 2 == 0 else "PNG"
                if k % 4 == 0 and img.mode == "RGB":
                    img = img.convert("CMYK")  # a CMYK JPEG (PIL writes Adobe's convention)
                img.save(str(d / ("%03d.%s" % (k, "JPEG" if fmt == "JPEG" else "png"))), fmt,
                         **({"quality": 90} if fmt == "JPEG" else {}))
                k += 1
    return str(root)


@pytest.mark.parametrize("resize,crop,archive", [(None, 32, False), (40, 24, False),
                                                 (24, 32, False), (64, 56, False),
                                                 (40, 24, True)])
def test_eval_transform_matches_torchvision(qtune, folder, tmp_path, resize, crop, archive):
    """The folder as it is, or as a .tar.gz (its entries then kept in memory)."""
    model = str(tmp_path / "pass.onnx")
    passthrough_model(model, crop)
    out = str(tmp_path / "y.npy")
    data = folder
    if archive:
        import tarfile
        data = str(tmp_path / "images.tar.gz")
        with tarfile.open(data, "w:gz") as t:
            for split in ("train", "val"):
                t.add(os.path.join(folder, split), arcname=split)
    args = ["run", model, "--data", data, "--split", "test", "--mean", "0,0,0", "--std",
            "1,1,1", "--crop", str(crop), "--output", out, "--quiet"]
    if resize:
        args += ["--resize", str(resize)]
    qtune(*args).check_ok()
    got = np.load(out)
    with open(str(tmp_path / "y.txt")) as f:
        names = [l.rstrip("\n") for l in f]
    r = resize or int(crop * 256 / 224)
    tf = transforms.Compose([transforms.Resize(r), transforms.CenterCrop(crop),
                             transforms.ToTensor()])
    ref = datasets.ImageFolder(os.path.join(folder, "val"), transform=tf)
    want = {os.path.realpath(p): i for i, (p, _) in enumerate(ref.samples)}
    assert got.shape == (len(ref.samples), 3, crop, crop), got.shape
    if archive:  # "ARCHIVE:val/class/file" names the entry
        names = [os.path.join(folder, n.split(":", 1)[1]) for n in names]
    assert sorted(os.path.realpath(n) for n in names) == sorted(want)
    worst = (0.0, 0.0)
    for row, name in enumerate(names):
        x, _ = ref[want[os.path.realpath(name)]]
        diff = np.abs(got[row] * 255.0 - x.numpy() * 255.0)
        assert np.all(np.isfinite(got[row])), name
        worst = (max(worst[0], float(diff.mean())), max(worst[1], float(diff.max())))
        assert diff.mean() <= 1.0 and diff.max() <= 8.0, (
            "%s: mean |qtune - torchvision| %.3f/255, max %.1f/255" % (name, diff.mean(),
                                                                      diff.max()))
    print("resize %d crop %d: %d images, worst mean %.4f/255, worst max %.1f/255"
          % (r, crop, len(names), worst[0], worst[1]))


def test_images_of_several_sizes_need_a_crop(qtune, folder, tmp_path):
    model = str(tmp_path / "pass.onnx")
    passthrough_model(model, 32)
    r = qtune("run", model, "--data", folder, "--split", "test", "--mean", "0,0,0", "--std",
              "1,1,1", "--output", str(tmp_path / "y.npy"), "--quiet")
    r.check_error("--crop S")


def test_crop_refused_for_fixed_size_formats(qtune, tmp_path):
    from conftest import fashion_mnist
    model = str(tmp_path / "pass.onnx")
    passthrough_model(model, 28)
    r = qtune("eval", model, "--data", fashion_mnist(), "--preset", "fashion-mnist", "--crop",
              "24", "--quiet")
    r.check_error("apply to image folders")


def ks_distance(a, b):
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, grid, "right") / len(a) -
                               np.searchsorted(b, grid, "right") / len(b))))


@pytest.mark.parametrize("w,h", [(500, 375), (375, 500), (64, 64), (400, 100)])
def test_random_resized_crop_boxes_follow_torchvision(qtune_tests, w, h):
    """The training transform's crop boxes against torchvision's RandomResizedCrop.get_params
    (scale 0.08-1, ratio 3/4-4/3), 50,000 of each for one image size: the share of fallback
    crops (ten rejected draws: the central crop) and the distributions of the box's area
    share, aspect ratio and relative position, compared by the two-sample KS distance. At
    this count two samples of one distribution stay under 0.017 with probability 1 - 1e-6
    (measured between two torchvision samples: 0.005 to 0.011); a scale range of 0.1-1
    instead of 0.08-1 moves the area share's distance to 0.025-0.031. Both samplers are
    seeded, so the outcome is fixed."""
    import torch
    n = 50000
    r = qtune_tests("--crop-boxes", w, h, n, 12345).check_ok()
    got = np.array([[int(v) for v in l.split()] for l in r.stdout.split("\n") if l.strip()])
    assert got.shape == (n, 4)
    torch.manual_seed(0)
    img = torch.zeros(1, h, w)
    want = []
    for _ in range(n):
        i, j, hh, ww = transforms.RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3))
        want.append((j, i, ww, hh))
    want = np.array(want)
    for boxes in (got, want):
        assert np.all(boxes[:, 2] >= 1) and np.all(boxes[:, 3] >= 1)
        assert np.all(boxes[:, 0] + boxes[:, 2] <= w) and np.all(boxes[:, 1] + boxes[:, 3] <= h)

    def features(b):
        area = b[:, 2] * b[:, 3] / float(w * h)
        ratio = np.log(b[:, 2] / b[:, 3])
        # position within the room left: 0.5 where the box fills the side
        px = np.where(b[:, 2] < w, b[:, 0] / np.maximum(w - b[:, 2], 1), 0.5)
        py = np.where(b[:, 3] < h, b[:, 1] / np.maximum(h - b[:, 3], 1), 0.5)
        return {"area share": area, "log aspect ratio": ratio, "left": px, "top": py}

    center = lambda b: np.mean((b[:, 0] == (w - b[:, 2]) // 2) & (b[:, 1] == (h - b[:, 3]) // 2)
                               & ((b[:, 2] == w) | (b[:, 3] == h)))
    fg, fw = features(got), features(want)
    assert abs(center(got) - center(want)) <= 0.01, (center(got), center(want))
    for k in fg:
        d = ks_distance(fg[k], fw[k])
        print("%dx%d %s: KS distance %.4f" % (w, h, k, d))
        assert d <= 0.017, (k, d)


@pytest.mark.badinput
@pytest.mark.parametrize("bad", ["truncated", "empty", "not_an_image"])
def test_bad_file_in_a_stream_is_named(qtune, folder, tmp_path, bad):
    """A streamed folder reads its files when a batch needs them: a truncated JPEG, a zero-byte
    file or a text file named .jpg stops `eval` with an error naming the file, never a
    crash."""
    import shutil
    root = str(tmp_path / "data")
    shutil.copytree(folder, root)
    victim = os.path.join(root, "val", "n02", "zz_bad.JPEG")
    src = sorted(f for f in os.listdir(os.path.join(root, "val", "n01")) if f.endswith("JPEG"))[0]
    data = open(os.path.join(root, "val", "n01", src), "rb").read()
    with open(victim, "wb") as f:
        f.write({"truncated": data[:len(data) // 3], "empty": b"",
                 "not_an_image": b"label,file\n0,a.jpg\n"}[bad])
    shutil.copy(victim, os.path.join(root, "train", "n02", "zz_bad.JPEG"))
    model = str(tmp_path / "pass.onnx")
    passthrough_model(model, 32)
    r = qtune("eval", model, "--data", root, "--crop", "32", "--mean", "0,0,0", "--std", "1,1,1",
              "--quiet")
    r.check_no_crash()
    r.check_error("zz_bad.JPEG")
