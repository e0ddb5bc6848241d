"""The shipped zoo registry as data: one record per release (see ``registry.Release`` for the fields).

Every fact was read from the sources each record names (repositories at the commits given, read through their
stored snapshots) or from the project's shared/CHECKPOINTS.md; nothing from memory. Facts the sources do not give
are ``None`` and listed in ``unverified``. No release publishes its file size; only MoCo's README publishes a
checksum (an md5 prefix), and OML (open-metric-learning) pins md5 prefixes of MoCo v2 and the DINO ViTs: the other
files get their SHA-256 computed, printed and recorded in the card at build time.
"""

from __future__ import annotations

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

_DINO = "facebookresearch/dino@7c446df5b9f45747937fb0d72314eb9f7b66930a"
_DINO_SOURCES = (
    f"{_DINO}:README.md (download URLs, linear top-1)",
    f"{_DINO}:eval_linear.py (evaluation preprocessing)",
    f"{_DINO}:LICENSE (Apache-2.0)",
)
_DINO_PAGE = "https://github.com/facebookresearch/dino#pretrained-models"
_DINO_PAPER = "https://arxiv.org/abs/2104.14294"
_DINO_LICENSE = "Apache-2.0: LICENSE and README of facebookresearch/dino (weights covered per facebookresearch/dino#108)"
# What every DINO release shares: license, data and evaluation preprocessing (eval_linear.py).
_DINO_RELEASE = {
    "license": "apache-2.0", "license_source": _DINO_LICENSE, "data": "imagenet-1k", "image_mean": _IMAGENET_MEAN,
    "image_std": _IMAGENET_STD, "resize": 256, "crop": 224, "preprocessing_source": f"{_DINO}:eval_linear.py",
}
_DINO_EPOCHS = "epochs: stated only in each release's args.txt on dl.fbaipublicfiles.com, which could not be read here"
_DINO_VIT_NOTE = (
    "DINO's linear evaluation reads the last 4 blocks' CLS tokens (ViT-S) or CLS + mean patch token (ViT-B); "
    "this model's features are the final CLS token, so its probe accuracy may differ"
)
_OML = "OML-Team/open-metric-learning@6be182e28ab01d237d64afb668b5b11ab94d3e25"
_OML_VIT = f"{_OML}:oml/models/vit_dino/extractor.py (md5 prefix, checked with oml/utils/io.py startswith)"

_MOCO = "facebookresearch/moco@132aea9da9bb995a411c915c0420be3db62052f3"
_MOCO_V3 = "facebookresearch/moco-v3@c349e6e24f40d3fedb22d973f92defa4cedf37a7"
_MOCO_V3_SOURCES = (
    f"{_MOCO_V3}:CONFIG.md (download URLs, linear accuracy, epochs)",
    f"{_MOCO_V3}:README.md (linear accuracy, license CC-BY-NC 4.0)",
    f"{_MOCO_V3}:main_lincls.py (evaluation preprocessing)",
)
_MOCO_V3_PAGE = "https://github.com/facebookresearch/moco-v3/blob/main/CONFIG.md"
_MOCO_V3_PAPER = "https://arxiv.org/abs/2104.02057"
_CC_BY_NC = "CC-BY-NC 4.0: README and LICENSE of the repository"
_NO_CHECKSUM = "checksum: none published or pinned in the sources read; the SHA-256 is computed and recorded at build"
_NO_SIZE = "size: not published"

RELEASES: list[dict] = [
    {
        "name": "mocov2-r50-800ep",
        "title": "MoCo v2 ResNet-50, 800 epochs",
        "method": "mocov2",
        "arch": "resnet50",
        "url": "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar",
        "file_name": "moco_v2_800ep_pretrain.pth.tar",
        "checksum": "md5:a04e12f8",
        "checksum_source": f"{_MOCO}:README.md (md5 column, first 8 hex digits); pinned the same in "
        f"{_OML}:oml/models/resnet/extractor.py",
        "layout": "moco",
        "license": "mit",
        "license_source": "MIT: LICENSE of facebookresearch/moco since January 2023 (CC-BY-NC 4.0 before; its README "
        "still says CC-BY-NC 4.0), per shared/CHECKPOINTS.md",
        "data": "imagenet-1k",
        "epochs": 800,
        "image_mean": _IMAGENET_MEAN,
        "image_std": _IMAGENET_STD,
        "resize": 256,
        "crop": 224,
        "preprocessing_source": f"{_MOCO}:main_lincls.py",
        "top1": 71.1,
        "top1_source": "https://github.com/facebookresearch/moco#models",
        "top1_note": "ImageNet linear classification, ResNet-50, 800 epochs, mlp + aug+ + cos",
        "paper": "https://arxiv.org/abs/2003.04297",
        "sources": (f"{_MOCO}:README.md (URL, epochs, top-1, md5)", f"{_MOCO}:main_lincls.py", "shared/CHECKPOINTS.md"),
        "unverified": (_NO_SIZE, "license: the LICENSE change does not single out the released weights"),
    },
    {
        "name": "simsiam-r50-100ep",
        "title": "SimSiam ResNet-50, 100 epochs, batch 256",
        "method": "simsiam",
        "arch": "resnet50",
        "url": "https://dl.fbaipublicfiles.com/simsiam/models/100ep-256bs/pretrain/checkpoint_0099.pth.tar",
        "file_name": "checkpoint_0099.pth.tar",
        "layout": "simsiam",
        "license": "cc-by-nc-4.0",
        "license_source": _CC_BY_NC,
        "data": "imagenet-1k",
        "epochs": 100,
        "image_mean": _IMAGENET_MEAN,
        "image_std": _IMAGENET_STD,
        "resize": 256,
        "crop": 224,
        "preprocessing_source": "facebookresearch/simsiam@a7bc1772896d0dad0806c51f0bb6f3b16d290468:main_lincls.py",
        "top1": 68.3,
        "top1_source": "https://github.com/facebookresearch/simsiam#models-and-logs",
        "top1_note": "ImageNet linear classification (LARS, batch 4096), 100 epochs pre-training with batch 256",
        "paper": "https://arxiv.org/abs/2011.10566",
        "sources": (
            "facebookresearch/simsiam@a7bc1772896d0dad0806c51f0bb6f3b16d290468:README.md (URL, epochs, batch, top-1, "
            "license)",
            "facebookresearch/simsiam@a7bc1772896d0dad0806c51f0bb6f3b16d290468:main_lincls.py",
        ),
        "unverified": (_NO_SIZE, _NO_CHECKSUM),
    },
    {
        "name": "swav-r50-800ep",
        "title": "SwAV ResNet-50, 800 epochs, multi-crop 2x224 + 6x96",
        "method": "swav",
        "arch": "resnet50",
        "url": "https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar",
        "file_name": "swav_800ep_pretrain.pth.tar",
        "layout": "swav",
        "license": "cc-by-nc-4.0",
        "license_source": "CC-BY-NC 4.0: LICENSE of facebookresearch/swav",
        "data": "imagenet-1k",
        "epochs": 800,
        "image_mean": _IMAGENET_MEAN,
        "image_std": (0.228, 0.224, 0.225),
        "resize": 256,
        "crop": 224,
        "preprocessing_source": "facebookresearch/swav@06b1b7cbaf6ba2a792300d79c7299db98b93b7f9:eval_linear.py",
        "top1": 75.3,
        "top1_source": "https://github.com/facebookresearch/swav#model-zoo",
        "top1_note": "ImageNet linear evaluation, 800 epochs, batch 4096, multi-crop 2x224 + 6x96",
        "paper": "https://arxiv.org/abs/2006.09882",
        "sources": (
            "facebookresearch/swav@06b1b7cbaf6ba2a792300d79c7299db98b93b7f9:README.md (URL, epochs, top-1)",
            "facebookresearch/swav@06b1b7cbaf6ba2a792300d79c7299db98b93b7f9:hubconf.py (the same URL for resnet50)",
            "facebookresearch/swav@06b1b7cbaf6ba2a792300d79c7299db98b93b7f9:eval_linear.py (std 0.228, 0.224, 0.225)",
            "facebookresearch/swav@06b1b7cbaf6ba2a792300d79c7299db98b93b7f9:LICENSE",
        ),
        "unverified": (_NO_SIZE, _NO_CHECKSUM),
    },
    {
        "name": "dino-r50",
        "title": "DINO ResNet-50 (backbone only, teacher)",
        "method": "dino",
        "arch": "resnet50",
        "url": "https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth",
        "file_name": "dino_resnet50_pretrain.pth",
        "layout": "dino_backbone",
        **_DINO_RELEASE,
        "top1": 75.3,
        "top1_source": _DINO_PAGE,
        "top1_note": "ImageNet linear evaluation (README table, ResNet-50)",
        "paper": _DINO_PAPER,
        "sources": _DINO_SOURCES,
        "unverified": (_NO_SIZE, _NO_CHECKSUM, _DINO_EPOCHS),
    },
    {
        "name": "byol-r50",
        "title": "BYOL ResNet-50 (pretrain_res50x1), converted to PyTorch by ajtejankar/byol-convert",
        "method": "byol",
        "arch": "resnet50",
        "url": "https://drive.google.com/uc?export=download&id=1nwaOpgmjpiOxJez7gUKQmYEiQIJe5Yss",
        "file_name": "pretrain_res50x1.pth.tar",
        "layout": "byol_converted",
        "license": "apache-2.0",
        "license_source": "Apache-2.0 of github.com/deepmind/deepmind-research (per shared/CHECKPOINTS.md and the "
        "converter layout); ajtejankar/byol-convert has no LICENSE file",
        "data": "imagenet-1k",
        "image_mean": _IMAGENET_MEAN,
        "image_std": _IMAGENET_STD,
        "resize": 256,
        "crop": 224,
        "preprocessing_source": "ajtejankar/byol-convert@7497e7f12016064704c2ad04dc3c90364e80d4a7:validate.py",
        "top1": 74.6,
        "top1_source": "https://github.com/ajtejankar/byol-convert#readme",
        "top1_note": "top-1 of the converted weights with their own linear head, measured by the converter's author "
        "(validate.py); DeepMind's original: 74.4",
        "paper": "Grill et al., Bootstrap Your Own Latent (NeurIPS 2020)",
        "sources": (
            "ajtejankar/byol-convert@7497e7f12016064704c2ad04dc3c90364e80d4a7:README.md (the Google Drive file of "
            "the converted pretrain_res50x1, top-1 74.6 converted / 74.4 original)",
            "ajtejankar/byol-convert@7497e7f12016064704c2ad04dc3c90364e80d4a7:convert.py (a plain state dict, "
            "file name pretrain_res50x1.pth.tar)",
            "ajtejankar/byol-convert@7497e7f12016064704c2ad04dc3c90364e80d4a7:validate.py (preprocessing)",
            "shared/CHECKPOINTS.md (layout, TF 'SAME' padding)",
        ),
        "unverified": (
            _NO_SIZE,
            _NO_CHECKSUM,
            "epochs: not stated by the converter's README",
            "url: a Google Drive file; Drive may answer a large file with a confirmation page instead of the file "
            "(the download then fails in one line): fetch it once by hand into a mirror and use --mirror",
            "license: that Apache-2.0 covers DeepMind's released weights is unconfirmed",
        ),
    },
    {
        "name": "simclr-v1-r50",
        "title": "SimCLR v1 ResNet-50 (1x), converted to PyTorch with tonylins/simclr-converter",
        "method": "simclr",
        "arch": "resnet50",
        "url": "https://huggingface.co/lightly-ai/simclrv1-imagenet1k-resnet50-1x/resolve/main/resnet50-1x.pth",
        "file_name": "resnet50-1x.pth",
        "layout": "simclr_v1_converted",
        "license": "apache-2.0",
        "license_source": "Apache-2.0: LICENSE of tonylins/simclr-converter; google-research/simclr is Apache-2.0 "
        "(per the converter layout)",
        "data": "imagenet-1k",
        "image_mean": (0.0, 0.0, 0.0),
        "image_std": (1.0, 1.0, 1.0),
        "resize": 256,
        "crop": 256,
        "preprocessing_source": "tonylins/simclr-converter@139d3cb0bd0c64b5ad32aab810e0bd0a0dddaae0:eval.py (Resize "
        "256, CenterCrop 256, no normalization: inputs in [0, 1])",
        "top1": 68.9,
        "top1_source": "https://github.com/tonylins/simclr-converter#performance",
        "top1_note": "PyTorch top-1 of the converted ResNet-50 (1x) with its linear head; TensorFlow original: 69.1",
        "paper": "Chen et al., A Simple Framework for Contrastive Learning of Visual Representations (ICML 2020)",
        "sources": (
            "tonylins/simclr-converter@139d3cb0bd0c64b5ad32aab810e0bd0a0dddaae0:README.md (file name resnet50-1x.pth, "
            "top-1)",
            "tonylins/simclr-converter@139d3cb0bd0c64b5ad32aab810e0bd0a0dddaae0:convert.py ({'state_dict': ...})",
            "tonylins/simclr-converter@139d3cb0bd0c64b5ad32aab810e0bd0a0dddaae0:eval.py (preprocessing)",
            "shared/CHECKPOINTS.md (the Hub repository lightly-ai/simclrv1-imagenet1k-resnet50-1x)",
        ),
        "unverified": (
            _NO_SIZE,
            _NO_CHECKSUM,
            "epochs: not stated by the converter's README",
            "url: the converter publishes no file; that the Hub repository named in shared/CHECKPOINTS.md holds the "
            "converter's output under its file name resnet50-1x.pth could not be checked offline",
            "license: that Apache-2.0 covers Google's released weights is unconfirmed",
        ),
    },
    *[
        {
            "name": f"dino-vit{size}{patch}",
            "title": f"DINO ViT-{size.upper()}/{patch} (backbone only, teacher)",
            "method": "dino",
            "arch": f"vit_{'small' if size == 's' else 'base'}_patch{patch}_224",
            "url": f"https://dl.fbaipublicfiles.com/dino/dino_{stem}_pretrain/dino_{stem}_pretrain.pth",
            "file_name": f"dino_{stem}_pretrain.pth",
            "checksum": f"md5:{md5}",
            "checksum_source": _OML_VIT,
            "layout": "dino_vit_backbone",
            **_DINO_RELEASE,
            "top1": top1,
            "top1_source": _DINO_PAGE,
            "top1_note": f"ImageNet linear evaluation (README table, ViT-{size.upper()}/{patch}); {_DINO_VIT_NOTE}",
            "paper": _DINO_PAPER,
            "sources": (*_DINO_SOURCES, _OML_VIT),
            "unverified": (_NO_SIZE, _DINO_EPOCHS),
        }
        for size, patch, stem, md5, top1 in (
            ("s", 16, "deitsmall16", "cf0f22", 77.0),
            ("s", 8, "deitsmall8", "230cd5", 79.7),
            ("b", 16, "vitbase16", "552daf", 78.2),
            ("b", 8, "vitbase8", "556550", 80.1),
        )
    ],
    *[
        {
            "name": f"mocov3-vit{size}-300ep",
            "title": f"MoCo v3 ViT-{size.upper()}, 300 epochs",
            "method": "mocov3",
            "arch": f"vit_{'small' if size == 's' else 'base'}_patch16_224",
            "url": f"https://dl.fbaipublicfiles.com/moco-v3/vit-{size}-300ep/vit-{size}-300ep.pth.tar",
            "file_name": f"vit-{size}-300ep.pth.tar",
            "layout": "mocov3_vit",
            "license": "cc-by-nc-4.0",
            "license_source": _CC_BY_NC,
            "data": "imagenet-1k",
            "epochs": 300,
            "image_mean": _IMAGENET_MEAN,
            "image_std": _IMAGENET_STD,
            "resize": 256,
            "crop": 224,
            "preprocessing_source": f"{_MOCO_V3}:main_lincls.py",
            "top1": top1,
            "top1_source": _MOCO_V3_PAGE,
            "top1_note": f"ImageNet linear classification, ViT-{'Small' if size == 's' else 'Base'}, 300 epochs"
            + (" (MoCo v3's ViT-S has 12 heads, not DeiT's 6)" if size == "s" else ""),
            "paper": _MOCO_V3_PAPER,
            "sources": _MOCO_V3_SOURCES,
            "unverified": (_NO_SIZE, _NO_CHECKSUM),
        }
        for size, top1 in (("s", 73.2), ("b", 76.7))
    ],
    {
        "name": "mocov3-r50-1000ep",
        "title": "MoCo v3 ResNet-50, 1000 epochs",
        "method": "mocov3",
        "arch": "resnet50",
        "url": "https://dl.fbaipublicfiles.com/moco-v3/r-50-1000ep/r-50-1000ep.pth.tar",
        "file_name": "r-50-1000ep.pth.tar",
        "layout": "mocov3",
        "license": "cc-by-nc-4.0",
        "license_source": _CC_BY_NC,
        "data": "imagenet-1k",
        "epochs": 1000,
        "image_mean": _IMAGENET_MEAN,
        "image_std": _IMAGENET_STD,
        "resize": 256,
        "crop": 224,
        "preprocessing_source": f"{_MOCO_V3}:main_lincls.py",
        "top1": 74.6,
        "top1_source": _MOCO_V3_PAGE,
        "top1_note": "ImageNet linear classification, ResNet-50, 1000 epochs",
        "paper": _MOCO_V3_PAPER,
        "sources": _MOCO_V3_SOURCES,
        "unverified": (_NO_SIZE, _NO_CHECKSUM),
    },
]
