"""Topic vocabularies for judging whether a report's top features are about its prompts.

A feature is judged *about the topic* when at least two of its five strongest tokens on the
prompts (or two words of its label) are words of the topic's vocabulary below. The
vocabularies are the topics' own content words, written by hand: nouns, verbs and adjectives
a reader would call "about pets" or "about cooking", never function words or punctuation.
It is a mechanical stand-in for a reader's judgement, strict on purpose: a feature made of
'.' and ' the' that fires only in recipes does not count, however specific it is.
"""

from __future__ import annotations

import re

TOPIC_WORDS: dict[str, frozenset[str]] = {
    name: frozenset(words.split())
    for name, words in {
        "pets": """cat cats kitten kittens puppy puppies dog dogs pet pets vet vaccine rabies
            hamster parrot goldfish rabbit guinea pig pigs animal animals shelter breed breeds
            leash tail whiskers fur purr purred purring bark barks barked howl howls wag wagged
            scratching scratch treat treats mice mouse wheel lap paw paws feed fed shedding
            brush litter collar adopt adopted rescue chew chewed squeak hop hops bowl walks
            walk mail whistle bird birds fish""",
        "cooking": """oven bake baked baking chop chopped onion onions fry fried frying olive oil
            salt pepper soup knead dough rise simmer tomato sauce garlic basil whisk eggs egg
            milk pan boil boiled boiling pasta marinate chicken lemon juice yogurt spices spice
            stir risotto broth ladle grate grated cheese lasagna roast vegetables rosemary
            crispy melt butter chocolate heat season steak sear skillet fold whipped cream
            batter peel dice diced potatoes potato salted recipe cup cups flour sugar cake
            frosting slice bread toast curry deglaze wine blend cookies golden vinegar mustard
            dressing rice parsley fish serving cook cooked cooking pot tray grease dente
            finely fresh fry pinch teaspoon tablespoon minutes degrees cool mix baking""",
        "sports": """striker scored score scores penalty match tennis final sets basketball
            team teams pointers game games goalkeeper saved shots shootout marathon runners
            finish line home run inning win won winning referee red card defender tackle
            football league championship season cyclist jersey stage coach substituted
            midfielder half time world record metres sprint quarterback touchdown pass
            quarter lost goals swimmer gold freestyle boxer knocked opponent round fans
            cheered players pitch golfer putt hole hockey overtime cup stadium umpire batter
            strikes ball winger cross box olympic athletes ace serve served rugby try club
            table place trains training player ran final""",
        "programming": """def return function class stack items self init import numpy array
            zeros list integers sorted ascending select from where customers country while
            count try except valueerror int text const total reduce sum compiler syntax error
            line git commit fix null pointer exception public static void main string args
            system println throw new argument declare variable integer loop unit test failed
            none open path handle readlines printf dictionary map key value api endpoint json
            status code factorial refactor method arguments modify let vec println numbers
            index bounds print sorted words key len install package pip script compile bug
            code program python java for if else null true false str name n""",
        "finance": """bank banks central interest rates rate raised shares company fell profits
            profit investors money government bonds bond inflation stock stocks market closed
            savings account fixed mortgage quarterly earnings analysts expectations dollar euro
            weakened dividends price firm borrowed debt pension funds fund invest estate budget
            deficit tax revenue sold loan annual percent hedge currency public offering credit
            card economy grew traders yields diversify portfolio investment risk lending
            unemployment wages gold venture capital startup raised dollars million financial
            trading trade buy sell prices""",
        "space": """telescope images galaxy galaxies astronauts astronaut space station rocket
            launched launch florida satellite mars moons phobos deimos black hole light
            spacecraft orbit orbiting jupiter star stars sun moon saturn rings ice rock probe
            landed comet planets planet elliptical milky way solar eclipse rover samples
            surface astronomers discovered international earth circles supernova explosion
            dying venus hottest system zero gravity capsule distant agency humans meteors
            atmosphere weather data crew docked nasa universe cosmic nearest lunar""",
        "medicine": """doctor prescribed antibiotics infection tablet patient admitted hospital
            chest pain vaccines immune system diseases disease nurse blood pressure heart rate
            symptoms flu surgeon removed tumour operation diabetes sugar x-ray broken bone
            clinic screening cholesterol rest fluids colds drug trial treatment asthma
            stitches cutting pharmacist side effects medicine exercise risk fever sore throat
            intensive care allergic reaction swelling rash test iron wash hands spread
            physiotherapist recover knee surgery viruses virus emergency ward dentist cavity
            tooth chronic therapy medication health healthy medical cure sick illness""",
        "music": """played play beautiful melody violin band released album practices piano
            scales orchestra performed symphony guitarist tuned strings concert singer note
            song songs beats bar waltz music drummer rhythm show choir sang hymns cathedral
            jazz musicians improvise solos solo charts composed soundtrack hall acoustics
            learned read sheet bass player stage pianist nocturne chopin chorus sing along
            festival rock bands folk singers conductor baton sings quartet minor key sad
            saxophone performance recorded studio opera aria italian guitar chords beethoven
            musical tune notes instrument instruments""",
    }.items()
}
_TOKEN = re.compile(r"[a-z][a-z'-]*")


def normalise(token: str) -> str:
    """A token or word as the vocabularies spell it (lower case, no spaces, no plural s)."""
    return token.strip().lower()


def on_topic(words: list[str], vocabulary: frozenset[str], need: int = 2) -> bool:
    """At least ``need`` distinct words of ``words`` are topic words (plurals folded)."""
    hits = set()
    for word in words:
        w = normalise(word)
        if w in vocabulary or (w.endswith("s") and w[:-1] in vocabulary):
            hits.add(w.rstrip("s"))
    return len(hits) >= need


def label_words(label: str | None) -> list[str]:
    return _TOKEN.findall((label or "").lower())
