"""The table of every data file: where it lives in the data root, where to download it, and the
checksums it must match.

Keys of :data:`SOURCES` are paths relative to the data root, laid out exactly as in
``../shared/data`` (see its README). A file is accepted when *any* listed digest matches.

Where the checksums come from:

* MNIST: sha256 as published by torchvision (equal to the shared copies) and the md5s listed by
  torchvision / ``datasets-mila``.
* Fashion-MNIST: md5s from the zalandoresearch/fashion-mnist README.
* KMNIST: md5s from rois-codh/kmnist (also in torchvision's resource list).
* EMNIST: NIST publishes the md5 of ``gzip.zip`` only. The sha256 of its ``.gz`` members are the
  values in Connor Olding's ``mnists`` hash list, which equal the Git LFS object ids in
  ``aurelienduarte/emnist`` (two independent copies). Members without a known sha256 (most
  mapping files) are trusted through ``emnist/.manifest.json``, written only when the member is
  extracted from a ``gzip.zip`` that matched its md5.
* CIFAR-10: md5 from https://www.cs.toronto.edu/~kriz/cifar.html.
* Omniglot: md5 of the original zips (torchvision's list), plus a *content digest* (see below).
* The Wizard of Oz: Gutenberg publishes none; see the entry.

Tests monkeypatch entries of :data:`SOURCES` to point at generated files.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Source",
    "SOURCES",
    "CONTENT_PNG_MEMBERS",
    "CONTENT_TEXT_BODY",
    "EMNIST_ARCHIVE",
    "EMNIST_VARIANTS",
    "get_source",
]

CONTENT_PNG_MEMBERS = "png-members-sha256"
"""Content digest: sha256 over the sorted (name, bytes) of a zip's .png members."""

CONTENT_TEXT_BODY = "gutenberg-body-sha256"
"""Content digest: sha256 of a Gutenberg text's normalised body (no BOM, LF, no header/footer)."""


@dataclass(frozen=True)
class Source:
    """One file of the data root and how to obtain and verify it.

    ``archive`` names (by relpath) an archive in this table that holds the file as a member;
    such files are extracted from it instead of being downloaded on their own.
    """

    relpath: str
    dataset: str
    urls: tuple[str, ...] = ()
    md5: tuple[str, ...] = ()
    sha256: tuple[str, ...] = ()
    content_kind: str | None = None
    content_sha256: tuple[str, ...] = ()
    archive: str | None = None
    size: int | None = None

    @property
    def filename(self) -> str:
        return self.relpath.rsplit("/", 1)[-1]


SOURCES: dict[str, Source] = {}


def _add(src: Source) -> None:
    SOURCES[src.relpath] = src


# --------------------------------------------------------------------------------- MNIST
_MNIST_URLS = ("http://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/")
for _name, _md5, _sha, _size in [
    ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873",
     "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422),
    ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432",
     "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881),
    ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3",
     "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877),
    ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c",
     "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542),
]:
    _add(Source(f"mnist/{_name}", "MNIST", tuple(u + _name for u in _MNIST_URLS),
                md5=(_md5,), sha256=(_sha,), size=_size))

# ------------------------------------------------------------------------- Fashion-MNIST
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
for _name, _md5, _size in [
    ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26421880),
    ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", 29515),
    ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", 4422102),
    ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", 5148),
]:
    _add(Source(f"fashion-mnist/{_name}", "Fashion-MNIST", (_FASHION_URL + _name,),
                md5=(_md5,), size=_size))

# --------------------------------------------------------------------------------- KMNIST
_KMNIST_URL = "http://codh.rois.ac.jp/kmnist/dataset/kmnist/"
for _name, _md5, _size in [
    ("train-images-idx3-ubyte.gz", "bdb82020997e1d708af4cf47b453dcf7", 18165135),
    ("train-labels-idx1-ubyte.gz", "e144d726b3acfaa3e44228e80efcd344", 29497),
    ("t10k-images-idx3-ubyte.gz", "5c965bf0a639b31b8f53240b1b52f4d7", 3041136),
    ("t10k-labels-idx1-ubyte.gz", "7320c461ea6c1c855c0b718fb2a4b134", 5120),
]:
    _add(Source(f"kmnist/{_name}", "KMNIST", (_KMNIST_URL + _name,), md5=(_md5,), size=_size))

# --------------------------------------------------------------------------------- EMNIST
EMNIST_ARCHIVE = "emnist/gzip.zip"
EMNIST_VARIANTS = ("byclass", "bymerge", "balanced", "letters", "digits", "mnist")
_add(Source(EMNIST_ARCHIVE, "EMNIST",
            ("https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip",
             "http://www.itl.nist.gov/iaui/vip/cs_links/EMNIST/gzip.zip"),
            md5=("58c8d27c78d21e728a6bc7b3cc06412e",)))

_EMNIST_SHA256 = {
    "emnist-balanced-test-images-idx3-ubyte.gz": "117fc12b015e37ea98bfb2cbba3f77c3782c056cdbd219b87abfc8661d7135db",
    "emnist-balanced-test-labels-idx1-ubyte.gz": "a67cac948379b67270b9a4d0a01c8ec661598accf2f2b1964340b7c83cb175cd",
    "emnist-balanced-train-images-idx3-ubyte.gz": "74295e75e4e9fa2c102147460ee7eb763653d5132d883a84fb88932bfb8d2db4",
    "emnist-balanced-train-labels-idx1-ubyte.gz": "b46d41e5156a0a8aaaa4d18979fdd1588850fa8571018acffd5d93b325a7d6ed",
    "emnist-byclass-test-images-idx3-ubyte.gz": "5ec835bd5d5b1a66378a132e727fef20fe994b3cc666899befcca5ac766f50cd",
    "emnist-byclass-test-labels-idx1-ubyte.gz": "501e305eeeacb093b162592d80e8a2632040872360fa6d85cfcb2200d91ca92a",
    "emnist-byclass-train-images-idx3-ubyte.gz": "9e21987f03a6eb8b870187e785883ddad96947299587908f1a7ec2ca0f4be5f0",
    "emnist-byclass-train-labels-idx1-ubyte.gz": "f7ef403d48dc18a89dae0d83d11ee69cecb6e1c12c3a961d03712e495c02a8fa",
    "emnist-bymerge-test-images-idx3-ubyte.gz": "5e5815ec1b522089134435f7c55e75a00960b58414793593ffff23efc0821683",
    "emnist-bymerge-test-labels-idx1-ubyte.gz": "8bda1516255683ba9071e141947ca0c91a911176065cdd6259b0b4d8dc5b5f35",
    "emnist-bymerge-train-images-idx3-ubyte.gz": "39bf8c68037dad40db35348895f7e4e056e8c0a005ab78869c9fbc2c96e947be",
    "emnist-bymerge-train-labels-idx1-ubyte.gz": "2c47293b9e62d6abf6ad05fbf67e40baa32adfd380b8d7b44dcc35534b64e1f1",
    "emnist-digits-test-images-idx3-ubyte.gz": "20ebe43509264f7639d37c835a3f0b009e90b29e00a099a03101abe1644a3f63",
    "emnist-digits-test-labels-idx1-ubyte.gz": "bad1834c45d5988e270b99d43b13edc3fd898f658ffbc2caf2846ef27f7b05b0",
    "emnist-digits-train-images-idx3-ubyte.gz": "f7c95004d14d81af89522e67d8f0c781dfb3bd544181c81bfe1eb6b41c35b726",
    "emnist-digits-train-labels-idx1-ubyte.gz": "6638a6ff5fe2eefd9cca2471995b46c82986b8e4b2a70d2f5ce8e05d7edb319e",
    "emnist-letters-test-images-idx3-ubyte.gz": "50f0e93d75b99b463e9760b8345866f22587fa2c2fba472730a5ba09c693412d",
    "emnist-letters-test-labels-idx1-ubyte.gz": "924955c31fe7fd809b7303b5c0141282955f4b8390c74cdfd5d80435e0f4b4cb",
    "emnist-letters-train-images-idx3-ubyte.gz": "6288f418a917e007bf5fddb823a2dc7a5c6a35031401b93292a539cb12bd881f",
    "emnist-letters-train-labels-idx1-ubyte.gz": "9759af91ea6bccdf07a6040fd085861f2ec88e37f7c3f5760f6feb57106fbe5c",
    "emnist-mnist-test-images-idx3-ubyte.gz": "b25640fa9e356c618132f5df347c95ef5bae6d9c2596be1de40f7e0ae1c3eac6",
    "emnist-mnist-test-labels-idx1-ubyte.gz": "bcc5385d38f083dba046f5f756e99b32f5ea7fad122c6243c71c2239873065ca",
    "emnist-mnist-train-images-idx3-ubyte.gz": "5f9942f441031c0f1f2e4d162059fd6e19ea808b34c328b6d16cab0ed24c78f2",
    "emnist-mnist-train-labels-idx1-ubyte.gz": "00c6d3c2342fdffb1711e0b5656cac4ce5862d2826399d383a9bac07d612e9f8",
    # Mapping files: sha256 of the CRLF files in the shared data (README there); the others are
    # trusted through the manifest of members extracted from the verified archive.
    "emnist-byclass-mapping.txt": "68fa9091ed325830418b5a8d732f32316e54a480b9f8994a161abb4eddd0d078",
    "emnist-mnist-mapping.txt": "6d157dc46a7b1c80d630f4fed571d9964db37ee1669cac403b6db2c8bb109d94",
}
for _variant in EMNIST_VARIANTS:
    _names = [f"emnist-{_variant}-{s}-{k}-ubyte.gz" for s in ("train", "test")
              for k in ("images-idx3", "labels-idx1")]
    _names.append(f"emnist-{_variant}-mapping.txt")
    for _name in _names:
        _sha = _EMNIST_SHA256.get(_name)
        _add(Source(f"emnist/{_name}", "EMNIST", sha256=(_sha,) if _sha else (),
                    archive=EMNIST_ARCHIVE))

# ------------------------------------------------------------------------------- CIFAR-10
_add(Source("cifar-10/cifar-10-python.tar.gz", "CIFAR-10",
            ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
            md5=("c58f30108f718f92721af3b95e74349a",), size=170498071))

# ------------------------------------------------------------------------------- Omniglot
# The shared zips are re-packed (different container bytes) around the original PNG bytes, so
# besides the md5 of the official zip we accept a content digest: sha256 over the sorted
# (member name, member bytes) of all .png members (exact encoding in digests._png_members_digest).
# The values below were computed once from ../shared/data/omniglot/*.zip, whose PNGs were checked
# against brendenlake/omniglot (see the shared README). Original and re-packed zips give the same
# value because the digest ignores the container.
_OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
_add(Source("omniglot/images_background.zip", "Omniglot", (_OMNIGLOT_URL + "images_background.zip",),
            md5=("68d2efa1b9178cc56df9314c21c6e718",), content_kind=CONTENT_PNG_MEMBERS,
            content_sha256=("cf37a435932cf9fbead947b447c1b4d9673162d3e47f048f5bdaaeeed6b5577e",)))
_add(Source("omniglot/images_evaluation.zip", "Omniglot", (_OMNIGLOT_URL + "images_evaluation.zip",),
            md5=("6b91aef0f799c5bb55b94e3f2daec811",), content_kind=CONTENT_PNG_MEMBERS,
            content_sha256=("568892d75da967755e333aa801994cde5153e019471fb0a543559e18d0370af9",)))

# ------------------------------------------------------------------------ Wizard of Oz text
# Gutenberg publishes no checksum and re-issues headers, so the verified value is a content
# digest of the normalised body (UTF-8 without BOM, LF line endings, header/footer cut at the
# "*** START OF" / "*** END OF" markers, outer whitespace stripped; case kept), computed from the
# shared copy. The shared file's raw sha256 (its README) is accepted as well.
_add(Source("text/wonderful-wizard-of-oz-pg55.txt", "The Wonderful Wizard of Oz (Project Gutenberg #55)",
            ("https://www.gutenberg.org/cache/epub/55/pg55.txt",),
            sha256=("cf66e1fda9ad5f4c74e1d8578a4edbd51d112425462edfffed31a33457a8e375",),
            content_kind=CONTENT_TEXT_BODY, content_sha256=("74d866801dcfe189820b08df0b76333027874e917a3c9a1c50ca2c3dd6a3bf8d",)))


def get_source(relpath: str) -> Source:
    """Table entry for ``relpath``; a ``KeyError`` here is a programming error, not a data one."""
    try:
        return SOURCES[relpath]
    except KeyError:
        raise KeyError(f"{relpath!r} is not in rulegym.envs.data.sources.SOURCES") from None
