"""Text normalisation and PII masking: the stages that rewrite text rather than judge it.

``Normalize`` is MAP-CC's format stage: NFKC, the 【…】-ratio rule (a page that is mostly
bracketed headings is navigation, not prose), full-width → half-width punctuation, optional
OpenCC traditional → simplified, and links stripped from the text.

``MaskPII`` replaces e-mail addresses, IPv4 addresses, mainland Chinese mobile and landline
numbers and resident identity numbers (checksum-validated, so long digit strings that are
not ID numbers stay) with placeholders. Patterns use digit look-arounds rather than ``\\b``,
which does not separate digits from CJK characters.
"""

from __future__ import annotations

import re
import unicodedata

from datatrove.data import Document

from ctlab.config import Fraction, config
from ctlab.data.steps import CleaningStep

# MAP-CC's 34-pair punctuation map (full-width → ASCII; 、《》【】…· stay). After NFKC only
# 。“”‘’ still need it, but it also serves recipes that switch NFKC off.
PUNCTUATION_TO_HALFWIDTH = str.maketrans(
    "。！？，：；“”‘’（）［］｛｝＃＄％＆＊＋－／＜＝＞＠＼＾＿｀｜～",
    ".!?,:;\"\"''()[]{}#$%&*+-/<=>@\\^_`|~",
)

_URL_CHARS = "\\s<>\"'\u3000-\u303f\uff00-\uffef\u4e00-\u9fff"  # characters a link stops at
# a link does not end in sentence punctuation: "见www.a.cn/x." keeps its final "."
LINK_RE = re.compile(rf"(?:https?://|ftp://|www\.)(?:[^{_URL_CHARS}]*[^{_URL_CHARS}.,;:!?)\]])?", re.I)
BRACKETED_RE = re.compile(r"【(.*?)】")  # MAP-CC counts the text inside, on one line


@config
class NormalizeConfig:
    enabled: bool = True
    nfkc: bool = True
    max_bracket_ratio: Fraction | None = 0.1  # None: rule off
    punctuation_to_halfwidth: bool = True
    traditional_to_simplified: bool = False
    strip_links: bool = True


class Normalize(CleaningStep):
    """NFKC → 【…】 ratio → links → punctuation → OpenCC. Drops for the bracket rule and for empty results."""

    name = "normalize"

    def __init__(self, config: NormalizeConfig, rejects_folder: str | None = None):
        super().__init__(rejects_folder)
        self.config = config
        self._opencc = None

    def process(self, doc: Document) -> bool | tuple[bool, str]:
        cfg = self.config
        text = doc.text
        if cfg.nfkc:
            text = unicodedata.normalize("NFKC", text)
        if cfg.max_bracket_ratio is not None and text:
            bracketed = sum(map(len, BRACKETED_RE.findall(text)))
            if bracketed / len(text) > cfg.max_bracket_ratio:
                return False, "bracket_ratio"
        if cfg.strip_links:  # before punctuation mapping, so a link does not swallow the 。 after it
            text = LINK_RE.sub("", text)
        if cfg.punctuation_to_halfwidth:
            text = text.translate(PUNCTUATION_TO_HALFWIDTH)
        if cfg.traditional_to_simplified:
            if self._opencc is None:
                import opencc

                self._opencc = opencc.OpenCC("t2s")
            text = self._opencc.convert(text)
        doc.text = text
        if not text.strip():
            return False, "empty_after_normalize"
        return True


_NOT_DIGIT_BEFORE = r"(?<![0-9])"
_NOT_DIGIT_AFTER = r"(?![0-9])"
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
IPV4_RE = re.compile(rf"(?<![0-9.]){_OCTET}(?:\.{_OCTET}){{3}}(?![0-9]|\.[0-9])")
MOBILE_RE = re.compile(
    rf"{_NOT_DIGIT_BEFORE}(?:(?:\+|00)?86[ \-]?)?1[3-9][0-9](?:[ \-]?[0-9]{{4}}){{2}}{_NOT_DIGIT_AFTER}"
)
LANDLINE_RE = re.compile(
    rf"(?:\(0[0-9]{{2,3}}\)|{_NOT_DIGIT_BEFORE}0[0-9]{{2,3}}[ \-]?)[2-9][0-9]{{6,7}}{_NOT_DIGIT_AFTER}"
)
ID_CARD_RE = re.compile(
    rf"{_NOT_DIGIT_BEFORE}[1-9][0-9]{{5}}(?:18|19|20)[0-9]{{2}}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])"
    rf"[0-9]{{3}}[0-9Xx]{_NOT_DIGIT_AFTER}"
)
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def valid_resident_id(number: str) -> bool:
    """GB 11643 checksum of an 18-character resident identity number."""
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == number[17].upper()


@config
class PIIConfig:
    enabled: bool = True
    email: str | None = "<email>"  # replacement; None: leave this kind alone
    ip: str | None = "<ip>"
    resident_id: str | None = "<id_number>"
    mobile: str | None = "<phone>"
    landline: str | None = "<phone>"


class MaskPII(CleaningStep):
    """Replaces personal data with placeholders; counts ``pii/<kind>``. Never drops a document."""

    name = "pii"

    def __init__(self, config: PIIConfig, rejects_folder: str | None = None):
        super().__init__(rejects_folder)
        self.config = config
        # one pass over the text: at each position the kinds are tried in this order
        kinds = [
            ("email", EMAIL_RE, config.email),
            ("resident_id", ID_CARD_RE, config.resident_id),
            ("mobile", MOBILE_RE, config.mobile),
            ("landline", LANDLINE_RE, config.landline),
            ("ip", IPV4_RE, config.ip),
        ]
        self._replacements = {kind: replacement for kind, _, replacement in kinds if replacement is not None}
        alternatives = [f"(?P<{kind}>{pattern.pattern})" for kind, pattern, replacement in kinds if replacement]
        self._pattern = re.compile("|".join(alternatives)) if alternatives else None

    def _replace(self, match: re.Match) -> str:
        kind = match.lastgroup
        if kind == "resident_id" and not valid_resident_id(match.group(0)):
            return match.group(0)
        self.stat_update(f"pii/{kind}")
        return self._replacements[kind]

    def process(self, doc: Document) -> bool:
        if self._pattern is None:
            return True
        doc.text = self._pattern.sub(self._replace, doc.text)
        return True
