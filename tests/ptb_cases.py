"""Captions for testing `ptb_tokenize` against the Java PTBTokenizer: hand-picked tricky cases, COCO-like captions and
seeded random mixtures of the fragments the Stanford lexer treats specially."""

import random

# One case per line. Quotes, apostrophes and contractions, hyphens and dashes, brackets, numbers, fractions, money,
# abbreviations and acronyms (with the words after them that make the lexer split a period off), ellipses, URLs,
# e-mail, emoticons, SGML, entities, unicode letters, quotes and symbols.
TRICKY = r'''A man's "big" dog.
"Hello," she said.
He said "no".
'Single quoted' words here
It's a dog's life, isn't it?
The dogs' bowls are empty
don't DON'T Don't dont
I'm you're we've they'll she'd
can't cannot Cannot CANNOT
won't shan't ain't y'all Y'all
gonna wanna gotta lemme gimme Gonna
'twas 'tis 'Twas the night
rock'n'roll and rock 'n' roll
the '90s and '80s and the 1990s
O'Neil O'Brien d'Artagnan l'amour
ma'am o'clock c'mon e'er li'l
a self-driving car on a two-lane road
a well-known x-ray of a 3-year-old
state-of-the-art e-mail re-enter
a man -- in a hat -- walks
a man - in a hat - walks
a man --- walks ---- away ----- now
wait... what? ok.. fine. . . end . . . .
an ellipsis… unicode
(a dog) [a cat] {a bird} <a fish>
((nested)) [[double]] {{curly}}
a dog (left) and a cat (right).
3.5 1,000 1,000,000 -5 +5 0.25 .5 5.
1/2 3/4 1 1/2 12/31/2020 2020-01-01 10:30 10:30pm
½ ¼ ¾ ⅓ ⅔ ⅕
$5 $5.99 US$5 £3 €4 ¥100 ¢50 5%
5*3 a*b *** ** *
a/b and/or 24/7 w/o km/h
U.S. U.S.A. e.g. i.e. etc. vs. Mr. Mrs. Dr. St.
Mr. Smith met Dr. Jones on St. Patrick's Day.
He lives in the U.S. The end.
He lives in the U.S. and Canada.
Apple Inc. The company.
Apple Inc. is big.
I. M. Pei
A. the letter
Jan. 5 and Feb. 3
No. 5 and fig. 3 and ca. 1900
Wash. D.C. is the capital.
http://www.example.com/x?y=1 and https://t.co/abc.
visit www.example.com or example.com today
email me at john.doe@example.com please
@user and #hashtag and #1
:-) :) ;-) :( :D :P <3 :-( =) ^_^ (^_^) o_O -_-
café naïve résumé Zürich São Paulo
Москва 北京 東京 서울 العربية
emoji 😀 here 👍 and ❤️ there
tab	separated	words
multiple     spaces    here
  leading and trailing spaces  
A&B AT&T S&P-500 Q&A R&D
&amp; &lt; &gt; &quot; &apos; &nbsp;
a - b, c; d: e! f? g.
Is it?! Really!!! What???
a+b=c 2+2=4 x^2 ~5 a|b a\b
100° 5×3 10÷2 © ® ™ § ¶ •
a “curly” quote and ‘single curly’ ones
«guillemets» and „low quotes“
the man‚s hat
hyphen‐unicode non‑breaking en–dash em—dash ―bar
soft­hyphen word
1st 2nd 3rd 4th 21st
5km 10kg 3ft 6'2" tall
a 6' tall man and 2'' thing
file.txt image.jpg script.py archive.tar.gz
C++ C# F# c++ c#
pro-choice anti-war -LRB- -RRB-
a dog's. a cat's; a bird's,
it's. that's! what's?
n't 's 'll 've 'd 're 'm
'em 'till 'til 'cause
he'd've I'd've
x'y 'a 'b' '
"" '' `` ` 
"quoted" and "quoted again"
a "quote at end"
"123" and "$5"
a man in a t-shirt and jeans
a 10-year-old boy
a dog at 5:30 p.m. on Jan. 1st
a.m. p.m. A.M. P.M.
Ph.D. M.D. B.A.
co. ltd. Co. Ltd. Pty. Ltd.
the St. Louis Arch
Mt. Everest and Ft. Worth
vs. VS. v.
The end.
the end
END.
a
.
...
?
!!
--
-
''
'
(
)
[]
{}
<>
the item #1 and ##2
under_score and __init__
a_b_c
ABC-123 XYZ 3D 4K HD TV
iPhone eBay McDonald's
a person holding a phone (iPhone 6s) in hand
there are 2 dogs, 3 cats, and 1 bird.
a "Stop" sign.
a sign that reads 'STOP'.
the words 'hello world' on a wall
the sign says: "No Parking".
5'10"
it's 5 o'clock
3 o' clock
the dog's ball's color
they're there; their dog
a man with a bag.A woman with a cat.
a man,a woman
a man;a woman
no space,after comma
dot.between words
U.K. based
the E.U. and the U.N.
A.B.C. D.E.F.
x.y
e.g.,
i.e.,
etc.,
a) first b) second
1) first 2) second
1. first 2. second
(1) first (2) second
+1 555-123-4567 (555) 123-4567 555.123.4567
192.168.0.1 1.2.3
v1.2.3 version 2.0
the 2000s and 2010's
a 360° view
a 100% cotton shirt
it costs $ 5
a man ~ woman
a man ... woman
a man .. woman
[citation needed]
<b>bold</b> <br/> <p class="x">
a < b > c
x<y and y>z
a=>b a->b a<-b
1-2 2-3 a-b
--a --b
-a -b
a- b-
- a
a -
a-
'quoted'
'quoted words'
'a
b'
the ' apostrophe
' start
end '
Who's who?
the Joneses' house
James' car
the 1980s' music
a kids' playground
rock 'n roll
the "Big Apple"'s lights
'"nested"'
"'nested'"
'''.split("\n")

# Characters that are hard to type or see.
UNICODE_EDGES = [
    "", " ", "\t", "x\u00a0y", "\u00a0", "5\u00a07/8", "555 123 4567", "(555) 123-4567", "\u24d0", "\u24b6",
    "\u01c5", "\u0130stanbul", "\u03a3\u039f\u03a6\u039f\u03a3", "stra\u00dfe", "\ufb01", "A\u0301",
    "e\u0301te\u0301", "\uff46\uff55\uff4c\uff4c \uff57\uff49\uff44\uff54\uff48\uff01",
    "\u4e2d\u6587\uff0c\u6807\u70b9\u3002", "\u0661\u0662\u0663", "x\u200by", "\ufeffbom", "a\x00b", "a\x7fb",
    "tab\tend\t", "10\u00bd", "\u2153 cup", "\u00ad", "soft\u00adhyphen", "x\u0092s", "\u0093quoted\u0094",
    "a line\nbreak", "\U0001F600 emoji", "ends with an emoji \U0001F44D",
]

_SUBJECTS = ["A man", "a woman", "Two dogs", "A group of people", "The cat", "a young boy", "An elephant",
             "A red double-decker bus", "Three giraffes", "A plate of food", "someone", "A skateboarder",
             "a little girl", "A black-and-white photo of a train", "The kitchen", "A baseball player"]
_VERBS = ["is sitting on", "are standing near", "riding", "holds", "looking at", "walks across", "is eating",
          "parked next to", "playing with", "flying over", "stands in front of", "lying on"]
_OBJECTS = ["a bench.", "the beach", "a surfboard in the ocean.", "a pizza with cheese and pepperoni.",
            "a laptop computer", "the street, near a building.", "a kite!", "some grass (green).", "a stop sign",
            "the tennis court", "a large clock tower", "two plates of food...", "a frisbee in the park.",
            "the U.S. Capitol.", "a hot dog and fries", "his cell phone", "a 'no parking' sign.",
            '"a Welcome" banner.', "their owner's car", "a wooden table; it's old."]
_FRAGMENTS = ["a", "A", "the", "The", "dog", "U.S.", "e.g.", "etc.", "Mr.", "Inc.", "I.", "'s", "n't", "can't", "'",
              '"', "``", "''", "(", ")", "[", "]", "{", "}", "<", ">", "-", "--", "---", "...", ". .", ".", ",", ";",
              ":", "!", "?", "?!", "/", "\\", "*", "&", "&amp;", "#", "@", "$", "%", "^", "~", "=", "+", "_", "1",
              "12", "3.5", "1,000", "1/2", "\u00bd", "\u20ac", "\u00a3", "\u00a2", "http://x.com/a", "www.a.org",
              "a@b.com", "caf\u00e9", "\u041c\u043e\u0441\u043a\u0432\u0430", "\u2019", "\u2018", "\u201c",
              "\u201d", "\u2014", "\u2013", "o'clock", "'90s", "gonna", "cannot", "x-ray", "3-year-old", "AT&T",
              "C++", "file.txt", ":)", ";-)", "^_^", "\t", "  ", "y'all", "l'", "d'", "O'Neil", '5\'10"', "No.",
              "fig.", "ca.", "Jan.", "co.", "ltd", "St.", "vs.", "non-U.S.", "<b>", "</b>", "&lt;", "&quot;",
              "&apos;"]


def coco_like(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    captions = [f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}" for _ in range(count)]
    shouted = [caption.upper() for caption in captions[:20]]
    spaced = ["  " + caption.replace(" ", "  ") for caption in captions[:20]]
    return captions + shouted + spaced


def fragment_mixtures(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(_FRAGMENTS) + rng.choice([" ", " ", " ", "", "  "]) for _ in range(rng.randint(1, 8)))
            for _ in range(count)]


CASES = TRICKY + UNICODE_EDGES + coco_like(200) + fragment_mixtures(600)
