"""The caption tokenization of pycocoevalcap's `PTBTokenizer`, in pure Python (no Java).

pycocoevalcap runs Stanford CoreNLP 3.4.1's `edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase` on
every caption, then drops the tokens in its punctuation list. CIDEr, BLEU, METEOR and ROUGE in the COCO toolkit all
score those tokens, so a CIDEr without the same tokenizer is not comparable to published numbers.

The Stanford tokenizer is a JFlex lexer: at each position every rule is tried, the longest match wins (a rule's
trailing context `r1/r2` counts towards its length, but only `r1` becomes the token) and ties go to the rule listed
first. This module restates the 3.4.1 rules with the options the command line sets (PTB3 escaping, minus
americanize and slash/asterisk escaping, which 3.4.1 turned off by default) as POSIX (leftmost-longest) patterns of
the `regex` package and runs the same selection. `%caseless` applies to literal text only, not to character classes,
so literal letters become "[xX]" classes and the grammar's own classes keep their case.

Differences, by design: pycocoevalcap replaces "\\n" in a caption by a space, but other line breaks ("\\r",
U+2028, ...) make Java start a new output line and shift every later caption onto the wrong image; here they are
whitespace. pycocoevalcap writes all captions into one file, and a few rules look past a caption's end into the
next one: a caption ending in a one-letter abbreviation ("... I.") followed by one starting with "The", "A", "He" and
~40 other words gives "i" there, "i." here; "No." at the end before a caption starting with a digit stays "no." there
and gives "no" here. Each caption is tokenized as if followed by a newline. Characters outside the Basic Multilingual
Plane (emoji) are deleted as untokenizable by both.
"""

import functools

import regex

# pycocoevalcap's list. After `-lowerCase` the lexer's "-LRB-" is "-lrb-", which the list no longer matches: brackets
# survive as "-lrb-" / "-rrb-" / "-lsb-" / "-rsb-" / "-lcb-" / "-rcb-" tokens, as in every published COCO score.
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
                          "...", ";"])


def _ranges(spec: str) -> str:
    """'00AD 0237-024F' → a regex class body; hex code points, kept readable."""
    parts = []
    for item in spec.split():
        low, _, high = item.partition("-")
        parts.append(f"\\u{low}" + (f"-\\u{high}" if high else ""))
    return "".join(parts)


def _ci(pattern: str) -> str:
    """Letters of a pattern's literal text matched in either case, as JFlex's `%caseless` does (not inside classes).

    Spelled out as "[wW]" classes rather than a scoped "(?i:...)" flag, which the `regex` package mishandles in some
    alternations (e.g. "(?:(?i:www)|(?:[^ ,-_$]+\\.)+com)" fails to match "x.com").
    """
    out, in_class, escaped = [], False, False
    for character in pattern:
        if character.isalpha() and not in_class and not escaped:
            out.append(f"[{character.lower()}{character.upper()}]")
        else:
            out.append(character)
            in_class = (in_class or character == "[") and not (character == "]" and in_class)
        escaped = character == "\\" and not escaped
    return "(?:" + "".join(out) + ")"


# --- the lexer's macros --------------------------------------------------------------------------------------------
SGML = (r"<(?:[!?][A-Za-z\-][^>\r\n]*|[A-Za-z][A-Za-z0-9_:.\-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.\-]*|"
        r"[A-Za-z][A-Za-z0-9_:.\-]*[ ]*=[ ]*(?:'[^']*'|\"[^\"]*\")))*[ ]*/?|/[A-Za-z][A-Za-z0-9_:.\-]*)[ ]*>")
SPMDASH = "&" + _ci("MD|mdash|ndash") + r";|[\u0096\u0097\u2013\u2014\u2015]"
SPAMP = "&" + _ci("amp") + ";"
SPPUNC = "&" + _ci("HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+") + ";"
SPLET = "&[aeiouAEIOU]" + _ci("acute|grave|uml") + ";"
SPACE = r"[ \t\u00A0\u2000-\u200A\u3000]"
NEWLINE = r"(?:\r|\r?\n|\u2028|\u2029|\u000B|\u000C|\u0085)"
SPACENL = f"(?:{SPACE}|{NEWLINE})"
SENTEND = rf"{SPACENL}(?:{SPACENL}|\p{{Lu}}|{SGML})"
DIGIT = r"[\p{Nd}\u07C0-\u07C9]"
DATE = f"{DIGIT}{{1,2}}[\\-/]{DIGIT}{{1,2}}[\\-/]{DIGIT}{{2,4}}"
NUMBER = f"[\\-+]?(?:{DIGIT}+|{DIGIT}*(?:[.:,\\u00AD\\u066B\\u066C]{DIGIT}+)+)"
SUBSUPNUM = r"[\u207A\u207B\u208A\u208B]?(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)"
FRAC = f"(?:{DIGIT}{{1,4}}[\\- \\u00A0])?{DIGIT}{{1,4}}(?:\\\\?/|\\u2044){DIGIT}{{1,4}}"
FRAC2 = r"[\u00BC\u00BD\u00BE\u2153-\u215E]"
DOLSIGN = r"(?:[A-Z]*\$|#)"
DOLSIGN2 = r"[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]"
# Marks and letters the JFlex version's [:letter:] lacked, added to LETTER by hand in the grammar.
_EXTRA_LETTERS = _ranges(
    "00AD 0237-024F 02C2-02C5 02D2-02DF 02E5-02FF 0300-036F 0370-037D 0384 0385 03CF 03F6 03FC-03FF 0483-0487 04CF "
    "04F6-04FF 0510-0525 055A-055F 0591-05BD 05BF 05C1 05C2 05C4 05C5 05C7 0615-061A 063B-063F 064B-065E 0670 "
    "06D6-06EF 06FA-06FF 070F 0711 0730-074F 0750-077F 07A6-07B1 07CA-07F5 07FA 0900-0903 093C 093E-094E 0951-0955 "
    "0962-0963 0981-0983 09BC-09C4 09C7 09C8 09CB-09CD 09D7 09E2 09E3 0A01-0A03 0A3C 0A3E-0A4F 0A81-0A83 0ABC-0ACF "
    "0B82 0BBE-0BC2 0BC6-0BC8 0BCA-0BCD 0C01-0C03 0C3E-0C56 0D3E-0D44 0D46-0D48 0E30-0E3A 0E47-0E4E 0EB1-0EBC "
    "0EC8-0ECD"
)
LETTER = rf"(?:[\p{{L}}{_EXTRA_LETTERS}]|{SPLET})"
ALNUM = r"[\p{L}\p{Nd}]"  # JFlex's [:letter:]|[:digit:], without the additions
WORD = f"{LETTER}(?:{LETTER}|{DIGIT})*(?:[.!?]{LETTER}(?:{LETTER}|{DIGIT})*)*"
FILENAME_EXT = _ci("bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|"
                   "png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip")
FILENAME = f"(?:{LETTER}|{DIGIT})+(?:[.](?:{LETTER}|{DIGIT})+)*(?:[.]{FILENAME_EXT})"
APOS = r"(?:['\u0092\u2019]|&" + _ci("apos") + ";)"
APOSETCETERA = rf"(?:{APOS}|[`\u0091\u2018\u201B])"
HYPHEN = r"[\-_\u058A\u2010\u2011]"
_THING_PART = f"(?:[dDoOlL]{APOSETCETERA}{ALNUM})?{ALNUM}+"
THING = f"{_THING_PART}(?:{HYPHEN}{_THING_PART})*"
THINGA = f"[A-Z]+(?:(?:[+&]|{SPAMP})[A-Z]+)+"
THING3 = r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
_ACRO_TAIL = _ci("Canada|Sino|Korean|EU|Japan|non") + "-" + _ci(r"U\.S") + "|" + _ci(r"U\.S\.-") + _ci(
    r"U\.K|U\.S\.S\.R")
ACRO = rf"(?:[A-Za-z](?:\.[A-Za-z])*|{_ACRO_TAIL})"
ACRO2 = rf"(?:[A-Za-z](?:\.[A-Za-z])+|{_ACRO_TAIL})"
HTHING = rf"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:[A-Za-z0-9\u00AD]+|{ACRO2}\.))+"
REDAUX = f"{APOS}(?:[msdMSD]|{_ci('re|ve|ll')})"
SWORD = r"[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*"  # words that can precede n't: not ending in n
SREDAUX = _ci("n") + APOSETCETERA + _ci("t")
APOWORD = "|".join([
    f"{APOS}{_ci('n')}{APOS}?", f"[lLdDjJ]{APOS}", f"{_ci('Dunkin')}{APOS}", f"{_ci('somethin')}{APOS}",
    f"{_ci('ol')}{APOS}", f"{APOS}{_ci('em')}", rf"[A-HJ-XZn]{APOSETCETERA}\p{{L}}{{2}}\p{{L}}*",
    f"{APOS}[2-9]{_ci('0s')}", f"{APOS}{_ci('till?')}",
    rf"\p{{L}}\p{{L}}*[aeiouyAEIOUY]{APOSETCETERA}[aeiouA-Z]\p{{L}}*",
    f"{APOS}{_ci('cause')}", _ci(r"cont'd\.?|'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l"),
    f"{_ci('O')}{APOSETCETERA}{_ci('o')}",
])
APOWORD2 = _ci("y") + APOS
FULLURL = _ci("https?") + r"://[^ \t\n\f\r\"<>|(){}]+[^ \t\n\f\r\"<>|.!?(){},\-]"
# ",-_" inside the second class is a range (U+002C-U+005F: digits, capitals, most ASCII punctuation), as in the
# grammar, so "Example.com" is no LIKELYURL while "example.com" is.
LIKELYURL = (r"(?:(?:" + _ci("www") + r"\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})|"
             r"(?:(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+\.)+" + _ci("com|net|org|edu") + r"))"
             r"(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},\-])?")
EMAIL = (r"(?:&" + _ci("lt") + r";|<)?[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00A0{}]*@"
         r"(?:[^ \t\n\f\r\"<>|(){}.\u00A0]+\.)*(?:[^ \t\n\f\r\"<>|(){}.\u00A0]+)(?:&" + _ci("gt") + ";|>)?")
TWITTER = f"@[a-zA-Z_][a-zA-Z_0-9]*|#{LETTER}+"
ABMONTH = _ci("Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec")
ABDAYS = _ci("Mon|Tue|Tues|Wed|Thu|Thurs|Fri")
# A capital in brackets is case-sensitive in the grammar ("[M]ass" is not "mass").
ABSTATE = "|".join([
    _ci("Ala|Ariz"), "A" + _ci("z"), "A" + _ci("rk"), _ci("Calif|Colo|Conn|Ct|Dak"), "D" + _ci("el"),
    _ci("Fla|Ga"), "I" + _ci("ll"), _ci("Ind|Kans?|Ky"), "L" + _ci("a"), "M" + _ci("ass"),
    _ci("Md|Mich|Minn"), "M" + _ci("iss"), _ci("Mo|Mont|Neb|Nev|Okla"), "O" + _ci("re"), "P" + _ci("a"),
    _ci("Penn|Tenn"), "T" + _ci("ex"), _ci("Va|Vt"), "W" + _ci("ash"), _ci("Wisc?|Wyo"),
])
ABCOMP = _ci("Inc|Cos?|Corp") + "|" + _ci("Pp?t") + "[ye]" + _ci("s?") + "|" + _ci(
    "Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys")
ABNUM = _ci("tel|est|ext|sq")
ABPTIT = _ci(r"Jr|Sr|Bros|(?:Ed|Ph)\.D|Blvd|Rd|Esq")
ABBREV1 = f"(?:{ABMONTH}|{ABDAYS}|{ABSTATE}|{ABCOMP}|{ABNUM}|{ABPTIT}|{_ci('etc|al|seq|Bldg')})\\."
ABTITLE = _ci("Mr|Mrs|Ms") + "|M" + _ci("iss") + "|" + _ci(
    "Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt|Cpl|Pvt|Capt|Ste?|Ave|Pres|Lieut|Hon|"
    "Brig|Co?mdr|Pfc|Spc|Supts?|Det|Mt|Ft|Adj|Adv|Asst|Assoc|Ens|Insp|Mlle|Mme|Msgr|Sfc")
ABCOMP2 = _ci("Invt|Elec|Natl") + "|" + _ci("M") + "[ft]" + _ci("g") + "|" + _ci("Dept")
ABBREV4 = "(?:" + "|".join([ABTITLE, _ci(r"vs|Alex|Wm|Jos|Cie|a\.k\.a|cf|TREAS|Ph"), ACRO, ABCOMP2]) + ")"
ABBREV3 = _ci("ca|figs?|prop|nos?|art|bldg|prop|pp|op") + r"\."
PHONE = (r"(?:\([0-9]{2,3}\)[ \u00A0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00A0])?[0-9]{2,4}[\- \u00A0])"
         r"[0-9]{3,4}[\- \u00A0]?[0-9]{3,5}|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}")
LDOTS = r"\.{3,5}|(?:\.[ \u00A0]){2,4}\.|[\u0085\u2026]"
INSENTP = r"[,;:\u3001]"
QUOTES = (rf"{APOS}|''|"
          r"[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F\u2039\u203A\u00AB\u00BB]{1,2}")
DBLQUOT = '"|&' + _ci("quot") + ";"
TBSPEC = "|".join([
    "-" + _ci("RRB|LRB|RCB|LCB|RSB|LSB") + "-", _ci(r"C\.D\.s|pro-|anti-"),
    _ci("S") + "(?:&|" + SPAMP + ")" + _ci("P-500"), _ci("S") + "(?:&|" + SPAMP + ")" + _ci("Ls"),
    _ci("Cap") + APOS + _ci("n"), _ci("c") + APOS + _ci("est"),
])
TBSPEC2 = f"{APOS}[0-9][0-9]"
SMILEY = r"[<>]?[:;=][\-o*']?[()DPdpO\\{@|\[\]]"
# The grammar's first alternative escapes its second "[", so it asks for a literal "[^x=~<>]" (kept as written).
ASIANSMILEY = (r"[\^x=~<>]\.\[\^" + _ci("x") + r"=~<>\]|[\-\^x=~<>']_[\-\^x=~<>']|"
               r"\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)|\([\^x=~<>']-[\^x=~<>'`]\)")
MISCSYMBOL = (r"[+%&~\^|\\\u00A6\u00A7\u00A8\u00A9\u00AC\u00AE\u00AF\u00B0-\u00B3\u00B4-\u00BA\u00D7\u00F7\u0387"
              r"\u05BE\u05C0\u05C3\u05C6\u05F3\u05F4\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B\u061E\u066A"
              r"\u066D\u0703-\u070D\u07F6\u07F7\u07F8\u0964\u0965\u0E4F\u1FBD\u2016\u2017\u2020-\u2023"
              r"\u2030-\u2038\u203B\u203E-\u2042\u2044\u207A-\u207F\u208A-\u208E\u2100-\u214F\u2190-\u21FF"
              r"\u2200-\u2BFF\u3012\u30FB\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40\uFF5B-\uFF65]")
_ACRONYM_FOLLOWERS = "|".join(
    f"{word[0]}{_ci(regex.escape(word[1:]))}" for word in [
        "About", "According", "Additionally", "After", "An", "A", "As", "At", "But", "Earlier", "He", "Her", "Here",
        "However", "If", "In", "It", "Last", "Many", "More", "Mr.", "Ms.", "Now", "Once", "One", "Other", "Our",
        "She", "Since", "So", "Some", "Such", "That", "The", "Their", "Then", "There", "These", "They", "This", "We",
        "When", "While", "What", "Yet", "You",
    ]
)

# --- actions: what a matched text becomes ----------------------------------------------------------------------------
_SKIP = None  # whitespace and untokenizable characters produce no token


def _same(text: str) -> str:
    return text


def _no_soft_hyphens(text: str) -> str:
    return text.replace("\u00AD", "") or "-"


def _nbsp(text: str) -> str:
    return text.replace(" ", "\u00A0")


_AMP_ENTITY = regex.compile("&[aA][mM][pP];")
_SINGLE_QUOTE = regex.compile("&apos;|'")
_DOUBLE_QUOTE = regex.compile('"|&quot;')
_CURLY_QUOTES = [(regex.compile(f"[{characters}]"), latex) for characters, latex in (
    ("\u0091\u2018\u201B\u2039", "`"), ("\u0092\u2019\u203A", "'"), ("\u0093\u201C\u00AB", "``"),
    ("\u0094\u201D\u00BB", "''"))]
_GENERIC_CURRENCY = regex.compile("[\u0080\u00A4\u20A0\u20AC]")


def _ampersand(text: str) -> str:
    return _AMP_ENTITY.sub("&", text)


def _brackets(text: str) -> str:
    return text.replace("(", "-LRB-").replace(")", "-RRB-")


def _latex_quotes(text: str, probably_left: bool) -> str:
    text = _SINGLE_QUOTE.sub("`" if probably_left else "'", text)
    text = _DOUBLE_QUOTE.sub("``" if probably_left else "''", text)
    for pattern, latex in _CURLY_QUOTES:
        text = pattern.sub(latex, text)
    return text


def _left_quote(text: str) -> str:
    return _latex_quotes(text, probably_left=True)


def _right_quote(text: str) -> str:
    return _latex_quotes(text, probably_left=False)


def _currency(text: str) -> str:
    return _GENERIC_CURRENCY.sub("$", text.replace("\u00A2", "cents").replace("\u00A3", "#"))


def _fraction(text: str) -> str:
    for character, spelled in zip("\u00BC\u00BD\u00BE\u2153\u2154", ("1/4", "1/2", "3/4", "1/3", "2/3")):
        text = text.replace(character, spelled)
    return text


def _dashes(text: str) -> str:
    return "--" if 3 <= len(text) <= 4 else text


def _constant(value: str):
    return lambda text: value


# A token's text is the rule's own match; `keep` (when set) shortens it, the rest being lexed again (JFlex's
# `yypushback`). Each entry: (main pattern, trailing context or None, action, keep).
_WITH_PERIOD_AGAIN = "period again"  # the token keeps its final period, which is also lexed again as "."
_RULES = [
    (_ci("c[+][+]"), None, _same, None),  # the class is case-sensitive, the "c" is not
    (_ci("(?:c|f)#"), None, _same, None),
    (_ci("cannot"), None, _same, 3),
    (_ci("'twas"), None, _same, 2),
    (_ci("'tis"), None, _same, 2),
    (_ci("gonna|gotta|lemme|gimme|wanna"), None, _same, 3),
    (SGML, None, _nbsp, None),
    (SPMDASH, None, _constant("--"), None),
    (SPAMP, None, _ampersand, None),
    (SPPUNC, None, _same, None),
    (WORD, REDAUX, _no_soft_hyphens, None),
    (SWORD, SREDAUX, _no_soft_hyphens, None),
    (WORD, None, _no_soft_hyphens, None),
    (APOWORD, None, _same, None),
    (APOWORD2, r"\p{L}", _same, None),
    (FULLURL, None, _same, None),
    (LIKELYURL, None, _same, None),
    (EMAIL, None, _same, None),
    (TWITTER, None, _same, None),
    (REDAUX, "[^A-Za-z]", _right_quote, None),
    (SREDAUX, "[^A-Za-z]", _right_quote, None),
    (DATE, None, _same, None),
    (NUMBER, None, _no_soft_hyphens, None),
    (SUBSUPNUM, None, _same, None),
    (FRAC, None, _nbsp, None),
    (FRAC2, None, _fraction, None),
    (TBSPEC, None, _ampersand, None),
    (THING3, None, _same, None),
    (DOLSIGN, None, _same, None),
    (DOLSIGN2, None, _currency, None),
    (rf"{ACRO}\.", rf"{SPACENL}+(?:{_ACRONYM_FOLLOWERS}|{SGML}){SPACENL}", _same, "acronym"),
    (ABBREV3, rf"{SPACENL}?\p{{Nd}}", _same, None),
    (_ci("pt") + r"[eyEY]\.|" + _ci(r"co\."), SPACE + _ci("ltd|lim"), _same, None),
    (ABBREV1, SENTEND, _same, _WITH_PERIOD_AGAIN),
    (ABBREV1, r"(?s:..)", _same, None),
    (ABBREV1, None, _same, _WITH_PERIOD_AGAIN),
    (f"{ABBREV4}\\.", None, _same, None),
    (ABBREV4, SPACE, _same, None),
    (ACRO, SPACENL, _same, None),
    (TBSPEC2, SPACENL, _same, None),
    (FILENAME, f"(?:{SPACENL}|[.?!,])", _same, None),
    (f"{WORD}\\.", INSENTP, _no_soft_hyphens, None),
    (PHONE, None, lambda text: _brackets(_nbsp(text)), None),
    (DBLQUOT, "[A-Za-z0-9$]", _left_quote, None),
    (DBLQUOT, None, _right_quote, None),
    ("\x7f", None, _SKIP, None),
    ("<|&" + _ci("lt") + ";", None, _constant("<"), None),
    (">|&" + _ci("gt") + ";", None, _constant(">"), None),
    (SMILEY, "[^A-Za-z0-9]", _brackets, None),
    (ASIANSMILEY, None, _brackets, None),
    (r"\{", None, _constant("-LCB-"), None),
    (r"\}", None, _constant("-RCB-"), None),
    (r"\[", None, _constant("-LSB-"), None),
    (r"\]", None, _constant("-RSB-"), None),
    (r"\(", None, _constant("-LRB-"), None),
    (r"\)", None, _constant("-RRB-"), None),
    (r"-+", None, _dashes, None),
    (LDOTS, None, _constant("..."), None),
    (r"@+|#+|_+", None, _same, None),
    (r"\*+|(?:\\\*){1,3}", None, _same, None),
    (INSENTP, None, _same, None),
    (r"[?!]+", None, _same, None),
    (r"[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002]", None, _same, None),
    ("=", None, _same, None),
    ("/", None, _same, None),
    (f"{HTHING}\\.", INSENTP, _no_soft_hyphens, None),
    (HTHING, None, _no_soft_hyphens, None),
    (f"{THING}\\.", INSENTP, _same, None),
    (THING, None, _same, None),
    (f"{THINGA}\\.", INSENTP, _ampersand, None),
    (THINGA, None, _ampersand, None),
    ("'", r"[A-Za-z][^ \t\n\r\u00A0]", _left_quote, None),
    (REDAUX, None, _right_quote, None),
    (SREDAUX, None, _right_quote, None),
    (QUOTES, None, _right_quote, None),
    ("<<|>>", None, _same, None),
    (MISCSYMBOL, None, _same, None),
    (rf"\x00|{SPACE}+|[\u200B\u200E\u200F\uFEFF]", None, _SKIP, None),
    (NEWLINE, None, _SKIP, None),  # one caption is one line (see the module docstring)
    (_ci("&nbsp;"), None, _SKIP, None),
    (r"[^\n]", None, _SKIP, None),  # untokenizable: deleted, as with the command line's default
]


@functools.cache
def _compiled_rules() -> list:
    """The rules as (pattern, action, keep); compiled on first use (~0.4 s), not when the trainer imports metrics."""
    compiled = []
    for main, trailing, action, keep in _RULES:
        pattern = f"(?P<main>{main})" + (f"(?P<trailing>{trailing})" if trailing else "")
        compiled.append((regex.compile(pattern, flags=regex.POSIX | regex.VERSION0), action, keep))
    return compiled


_TRAILING_WHITESPACE = " \t\n\u000B\u000C\r\u0085"


@functools.lru_cache(maxsize=None)
def _rules_starting_with(character: str) -> tuple:
    """The rules that can match text starting with `character` (most cannot: trying only these is ~4x faster)."""
    return tuple(rule for rule in _compiled_rules() if rule[0].match(character, partial=True))


# Letters followed by a space or the line end: no rule matches longer than the word itself (the ones that read on
# need "." "'" "-" "@" "/" "&" "+" "#" "$" or a digit), and the few that match as long give the same text. Only the
# split assimilations ("cannot" → "can" "not") differ. Most of a caption's tokens take this path.
_PLAIN_WORD = regex.compile(r"[A-Za-z]+(?=[ \n])")
_ASSIMILATIONS = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])


def _lex(text: str) -> list[str]:
    tokens, position = [], 0
    while position < len(text):
        plain = _PLAIN_WORD.match(text, position)
        if plain is not None and plain.group().lower() not in _ASSIMILATIONS:
            tokens.append(plain.group())
            position = plain.end()
            continue
        best, best_length = None, 0
        for rule in _rules_starting_with(text[position]):
            match = rule[0].match(text, position)
            if match is not None and match.end() - position > best_length:
                best, best_length = (match, *rule[1:]), match.end() - position
        match, action, keep = best
        token = match.group("main")
        if keep == "acronym":
            # The grammar's action strips whitespace JFlex may leave in the token, returns one-letter "I." as "I"
            # (the period comes next), and otherwise keeps the period and lexes it again.
            token = token.rstrip(_TRAILING_WHITESPACE)
            keep = 1 if len(token) == 2 else _WITH_PERIOD_AGAIN
        if keep == _WITH_PERIOD_AGAIN:
            position += len(token) - 1
        elif keep is not None:
            token = token[:keep]
            position += keep
        else:
            position += len(token)
        if action is not _SKIP:
            tokens.append(action(token))
    return tokens


@functools.lru_cache(maxsize=65536)
def _tokenize_one(text: str) -> str:
    # In pycocoevalcap's input file a newline follows every caption (but the last), and some rules look at it.
    words = (token.lower() for token in _lex(text.replace("\n", " ") + "\n"))
    return " ".join(word for word in words if word not in PUNCTUATIONS)


def ptb_tokenize(texts: list[str]) -> list[str]:
    """Tokenize captions as pycocoevalcap's `PTBTokenizer` does, one string of space-joined tokens per caption.

    Stanford PTB rules (CoreNLP 3.4.1), lower-cased, pycocoevalcap's punctuation tokens removed:

    >>> ptb_tokenize(['A man\\'s "big" dog can\\'t stop running... (fast)'])
    ["a man 's big dog ca n't stop running -lrb- fast -rrb-"]
    """
    if isinstance(texts, str):
        raise TypeError("ptb_tokenize takes a list of strings; wrap a single caption in a list.")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] is {type(text).__name__}, not str.")
    return [_tokenize_one(text) for text in texts]


__all__ = ["PUNCTUATIONS", "ptb_tokenize"]
