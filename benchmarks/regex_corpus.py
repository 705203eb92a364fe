"""Regex corpus for ``bench_regex.py``: everyday patterns plus the known hard cases.

Each entry: ``(name, pattern, samples)``. Samples are strings that fully match the pattern under
the engine's dialect (``\\d \\w \\s`` ASCII-only, as in JSON Schema's ECMA-262); the benchmark checks
that with ``re.fullmatch(pattern, s, re.ASCII)`` before timing anything. Long samples are preferred:
the per-token timing walks their real Tekken tokenization.
"""

from __future__ import annotations

import re

__all__ = ["CORPUS", "check_corpus"]

_WORDS = (
    "apple banana cherry date elderberry fig grape honeydew kiwi lemon mango nectarine orange papaya "
    "quince raspberry strawberry tangerine ugli vanilla watermelon xigua yam zucchini apricot "
    "blackberry cantaloupe dragonfruit eggplant feijoa guava huckleberry jackfruit kumquat lime "
    "lychee mulberry olive peach pear persimmon pineapple plum pomegranate rhubarb soursop tomato"
).split()
_ALTERNATION = "(" + "|".join(_WORDS) + ")"

_IPV4_OCTET = r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"

CORPUS: list[tuple[str, str, list[str]]] = [
    ("identifier", r"[a-zA-Z_][a-zA-Z0-9_]*", ["my_variable_name42", "_privateCounterValue"]),
    ("email", r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}",
     ["john.doe+newsletter@example-mail.co.uk", "alice_42@sub.domain.org"]),
    ("date", r"\d{4}-\d{2}-\d{2}", ["2024-11-28", "1999-01-31"]),
    ("date_strict", r"(19|20)\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])", ["2024-02-29", "1987-12-01"]),
    ("time", r"([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?", ["23:59:59", "08:30"]),
    ("datetime", r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})",
     ["2024-11-28T08:45:12.123456+01:00", "2001-01-01T00:00:00Z"]),
    ("ipv4", rf"({_IPV4_OCTET}\.){{3}}{_IPV4_OCTET}", ["192.168.100.254", "8.8.4.4"]),
    ("ipv6_full", r"([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}", ["2001:0db8:85a3:0000:0000:8a2e:0370:7334", "fe80:0:0:0:202:b3ff:fe1e:8329"]),
    ("phone_us", r"\(\d{3}\) \d{3}-\d{4}", ["(555) 123-4567", "(800) 555-0199"]),
    ("phone_intl", r"\+\d{1,3}( \d{2,4}){2,4}", ["+44 20 7946 0958", "+1 415 555 2671"]),
    ("integer", r"-?(0|[1-9]\d*)", ["-1234567890", "0"]),
    ("float", r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?", ["-3.14159265358979e-10", "42.5"]),
    ("money", r"\$\d{1,3}(,\d{3})*(\.\d{2})?", ["$1,234,567.89", "$12.00"]),
    ("uuid", r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
     ["123e4567-e89b-12d3-a456-426614174000", "f47ac10b-58cc-4372-a567-0e02b2c3d479"]),
    ("hex_color", r"#[0-9a-fA-F]{6}", ["#1a2B3c", "#FFFFFF"]),
    ("semver", r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?", ["1.22.333-beta.2", "0.1.0"]),
    ("url", r"https?://[a-z0-9.-]+\.[a-z]{2,6}(/[\w.-]*)*",
     ["https://docs.example.com/guide/getting-started/index.html", "http://a.io/"]),
    ("words_alternation", _ALTERNATION, ["pomegranate", "kiwi", "huckleberry"]),
    ("word_list", _ALTERNATION + "(, " + _ALTERNATION + "){0,9}",
     ["apple, banana, cherry, soursop, lime, dragonfruit", "persimmon"]),
    ("choice_sentence", r"The answer is (yes|no|maybe)\.", ["The answer is maybe.", "The answer is no."]),
    ("bounded_letters_200", r"[a-z]{1,200}", ["thequickbrownfoxjumpsoverthelazydog" * 4, "x"]),
    ("no_quote_20", r'[^"\\]{0,20}', ["Hello, world! 12345", "ünïcödé ok"]),
    ("word_chars_64", r"[\w.-]{1,64}", ["some.file-name_version_2.tar.gz", "a"]),
    ("letters_spaces_10_100", r"[A-Za-z ]{10,100}", ["The quick brown fox jumps over the lazy dog again and again"]),
    ("json_string", r'"([^"\\]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"',
     ['"He said \\"hi\\" and left\\n then \\u00e9t\\u00e9 came"', '"plain text with spaces"']),
    ("flat_json_object", r'\{"name":"[^"]{1,30}","age":\d{1,3},"tags":\[("[a-z]{1,10}"(,"[a-z]{1,10}"){0,4})?\]\}',
     ['{"name":"Ada Lovelace","age":36,"tags":["math","poetry"]}', '{"name":"X","age":1,"tags":[]}']),
    ("number_list", r"\[(\d+(,\d+)*)?\]", ["[1,22,333,4444,55555]", "[]"]),
    ("nested_groups", r"((\((\d+,)*\d+\))|(\[[a-z]+(;[a-z]+)*\]))+", ["(1,2,3)[ab;cd](42)", "[x]"]),
    ("nested_alternation", r"(((ab|cd)(ef|gh))|((ij|kl)(mn|op)))+(qr|st)?", ["abefijmncdghst", "klop"]),
    ("csv_row", r'("[^"]*"|[^,"\n]*)(,("[^"]*"|[^,"\n]*)){2,5}', ['"Smith, John",42,"New York",NY', "a,b,c"]),
    ("markdown_heading", r"#{1,6} [^\n]{1,80}", ["## Installation and configuration notes", "# T"]),
    ("sentence", r"[A-Z][a-z]+( [a-z]+){2,10}\.", ["Structured generation keeps the model on the rails."]),
    ("credit_card", r"\d{4}( \d{4}){3}", ["4111 1111 1111 1111"]),
    ("uk_postcode", r"[A-Z]{1,2}\d[A-Z\d]? \d[A-Z]{2}", ["SW1A 1AA", "M1 1AE"]),
    ("any_50", r".{1,50}", ["Anything goes here: 123 !@# äöü 日本語 🎉", "x"]),
    ("bounded_whitespace", r"\{\s{0,4}\"ok\"\s{0,4}:\s{0,4}(true|false)\s{0,4}\}", ['{ "ok": true }', '{"ok":false}']),
    ("german", r"(Straße|Größe|Übermäßig|Fußgängerüberweg)( (Straße|Größe|Übermäßig|Fußgängerüberweg))*",
     ["Fußgängerüberweg Größe Straße", "Übermäßig"]),
    ("cjk", r"[一-鿿]{1,10}", ["中华人民共和国", "东京"]),
    ("emoji_alternation", r"(😀|🎉|🚀|❤️|👍🏽)+", ["🚀🎉😀❤️👍🏽", "🎉"]),
    ("emoji_range", r"[😀-🙏]{1,5}", ["😀😃😄😁😆", "🙏"]),
    ("greek_cyrillic", r"[α-ω]+ [а-я]+", ["καλημερα привет", "αβγ абв"]),
    ("price_euro", r"Prix : \d{1,5},\d{2} €", ["Prix : 1234,56 €"]),
]


def check_corpus() -> list[str]:
    """Problems in the corpus itself (samples that do not match their pattern under ``re.ASCII``)."""
    problems = []
    names = set()
    for name, pattern, samples in CORPUS:
        if name in names:
            problems.append(f"duplicate name {name}")
        names.add(name)
        for s in samples:
            if not re.fullmatch(pattern, s, re.ASCII):
                problems.append(f"{name}: sample {s!r} does not match {pattern!r}")
    return problems


if __name__ == "__main__":
    bad = check_corpus()
    print(f"{len(CORPUS)} regexes, {sum(len(s) for _, _, s in CORPUS)} samples; problems: {bad or 'none'}")
