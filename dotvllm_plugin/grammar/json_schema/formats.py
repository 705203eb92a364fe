"""``format`` values as regexes over JSON string bodies (all ASCII, no escapes needed).

Each regex accepts only strings that are valid for the format's defining RFC (a subset where
noted: the sound direction). Formats we know but do not enforce are refused; formats nobody
defines are annotations (see the json_schema package).
"""

from __future__ import annotations

from . import text as T

_YEAR = "(?:[0-9]{3}[1-9]|[0-9]{2}[1-9]0|[0-9][1-9]00|[1-9]000)"  # 0001-9999
_LEAP_YEAR = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_MONTH_DAY = (
    "(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    "|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
DATE = f"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"
# RFC 3339 full-time; upper-case T/Z only and no leap second (a subset)
TIME = (
    "(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{1,9})?"
    "(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
DATE_TIME = f"{DATE}T{TIME}"
# RFC 3339 appendix A (ISO 8601 durations)
_D = "[0-9]{1,9}"
_DUR_TIME = f"T(?:{_D}H(?:{_D}M(?:{_D}S)?)?|{_D}M(?:{_D}S)?|{_D}S)"
_DUR_DATE = f"(?:{_D}D|{_D}M(?:{_D}D)?|{_D}Y(?:{_D}M(?:{_D}D)?)?)(?:{_DUR_TIME})?"
DURATION = f"P(?:{_DUR_DATE}|{_DUR_TIME}|{_D}W)"

UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"

_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
IPV4 = f"{_OCTET}(?:\\.{_OCTET}){{3}}"
_H = "[0-9a-fA-F]{1,4}"
IPV6 = "(?:" + "|".join([
    f"(?:{_H}:){{7}}{_H}",
    f"(?:{_H}:){{1,7}}:",
    f"(?:{_H}:){{1,6}}:{_H}",
    f"(?:{_H}:){{1,5}}(?::{_H}){{1,2}}",
    f"(?:{_H}:){{1,4}}(?::{_H}){{1,3}}",
    f"(?:{_H}:){{1,3}}(?::{_H}){{1,4}}",
    f"(?:{_H}:){{1,2}}(?::{_H}){{1,5}}",
    f"{_H}:(?::{_H}){{1,6}}",
    f":(?::{_H}){{1,7}}",
    "::",
    f"(?:{_H}:){{6}}{IPV4}",
    f"::(?:{_H}:){{0,5}}{IPV4}",
]) + ")"

# RFC 1123 host names; at most 4 labels of at most 62 characters keeps the total under 253
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,60}[A-Za-z0-9])?"
_TLD = "[A-Za-z](?:[A-Za-z0-9-]{0,60}[A-Za-z0-9])?"
HOSTNAME = f"(?:{_LABEL}\\.){{0,3}}{_TLD}"
# RFC 5321 Mailbox ABNF (which has no length limits): Dot-string "@" Domain; we require a dot in
# the domain and leave out quoted local parts and address literals (restrictions).
_ATEXT = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_SUBDOMAIN = "[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
EMAIL = f"{_ATEXT}+(?:\\.{_ATEXT}+)*@{_SUBDOMAIN}(?:\\.{_SUBDOMAIN})+"

# RFC 3986 (no IP-literal hosts: a subset)
_UNRESERVED = "[A-Za-z0-9._~-]"
_PCT = "%[0-9A-Fa-f]{2}"
_SUB = "[!$&'()*+,;=]"
_PCHAR = f"(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|{_PCT})"
_SEGMENT = f"{_PCHAR}*"
_SEGMENT_NZ = f"{_PCHAR}+"
_SEGMENT_NZ_NC = f"(?:[A-Za-z0-9._~!$&'()*+,;=@-]|{_PCT})+"
_AUTHORITY = (
    f"(?:(?:[A-Za-z0-9._~!$&'()*+,;=:-]|{_PCT})*@)?(?:[A-Za-z0-9._~!$&'()*+,;=-]|{_PCT})*(?::[0-9]*)?"
)
_PATH_ABEMPTY = f"(?:/{_SEGMENT})*"
_PATH_ABSOLUTE = f"/(?:{_SEGMENT_NZ}(?:/{_SEGMENT})*)?"
_QUERY = f"(?:\\?(?:{_PCHAR}|[/?])*)?(?:#(?:{_PCHAR}|[/?])*)?"
URI = (
    f"[A-Za-z][A-Za-z0-9+.-]*:(?://{_AUTHORITY}{_PATH_ABEMPTY}|{_PATH_ABSOLUTE}"
    f"|{_SEGMENT_NZ}(?:/{_SEGMENT})*|){_QUERY}"
)
URI_REFERENCE = (
    f"(?:{URI}|(?://{_AUTHORITY}{_PATH_ABEMPTY}|{_PATH_ABSOLUTE}"
    f"|{_SEGMENT_NZ_NC}(?:/{_SEGMENT})*|){_QUERY})"
)

_POINTER_CHAR = T.encode_set(T.subtract(T.ENCODABLE, T.chars("~/")))
JSON_POINTER = f"(?:/(?:{_POINTER_CHAR}|~[01])*)*"

FORMATS: dict[str, str] = {
    "date": DATE,
    "time": TIME,
    "date-time": DATE_TIME,
    "duration": DURATION,
    "uuid": UUID,
    "ipv4": IPV4,
    "ipv6": IPV6,
    "hostname": HOSTNAME,
    "email": EMAIL,
    "uri": URI,
    "uri-reference": URI_REFERENCE,
    "json-pointer": JSON_POINTER,
    "ip-address": IPV4,  # draft 3
    "host-name": HOSTNAME,  # draft 3
}

UNSUPPORTED_FORMATS = frozenset({
    "idn-email", "idn-hostname", "iri", "iri-reference", "uri-template",
    "relative-json-pointer", "regex",
})
