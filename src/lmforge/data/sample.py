"""Offline sample data, written in the raw formats of the real data (text, CSV/JSONL, CoNLL,
SQuAD, prompt/completion JSONL).

Deterministic: each task draws from its own `random.Random` seeded from `seed`, so the
same seed gives byte-identical files and resizing one task leaves the others unchanged.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from pathlib import Path

from lmforge.config import LocalData, SampleData, SplitPaths, TablePaths
from lmforge.errors import ConfigError

CORPUS_VALIDATION_FRACTION = 0.05
# Share of each name list seen only in NER validation, so memorising names fails.
UNSEEN_NAME_FRACTION = 0.3


def write_sample_data(out_dir: str | Path, cfg: SampleData, seed: int) -> LocalData:
    """Write corpus, classification, NER, QA and generation sample files; return their paths."""
    out = Path(out_dir)
    for task in ("corpus", "classification", "ner", "qa", "generation"):
        (out / task).mkdir(parents=True, exist_ok=True)
    return LocalData(
        corpus=_write_corpus(out / "corpus", seed),
        classification=_write_classification(out / "classification", cfg, seed),
        ner=_write_ner(out / "ner", cfg, seed),
        qa=_write_qa(out / "qa", cfg, seed),
        generation=_write_generation(out / "generation", cfg, seed),
    )


def sample_paths(out_dir: str | Path) -> LocalData:
    """Where `write_sample_data` puts each file: what `data.source: sample` reads."""
    out = Path(out_dir)
    return LocalData(
        corpus=SplitPaths(str(out / "corpus/train.txt"), str(out / "corpus/validation.txt")),
        classification=TablePaths(
            str(out / "classification/train.csv"), str(out / "classification/validation.jsonl")
        ),
        ner=SplitPaths(str(out / "ner/train.conll"), str(out / "ner/validation.conll")),
        qa=SplitPaths(str(out / "qa/train.json"), str(out / "qa/validation.json")),
        generation=SplitPaths(
            str(out / "generation/train.jsonl"), str(out / "generation/validation.jsonl")
        ),
    )


def split_sizes(total: int, fraction: float, key: str) -> tuple[int, int]:
    """(train, validation) sizes; both splits get at least one item."""
    n_val = max(1, round(total * fraction))
    if total - n_val < 1:
        raise ConfigError(f"data.sample.{key} must be at least 2 (one per split), got {total}")
    return total - n_val, n_val


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8", newline="\n")
    return str(path)


# --- corpus: English prose shipped with Python (the language reference's help topics) ---


def prose_paragraphs() -> list[str]:
    """Prose paragraphs of `pydoc_data.topics`, one line each; code and headings left out."""
    from pydoc_data.topics import topics

    paragraphs = []
    for key in sorted(topics):
        for block in re.split(r"\n[ \t]*\n", topics[key]):
            lines = [line.strip() for line in block.strip("\n").split("\n")]
            text = re.sub(r"\s+", " ", " ".join(lines))
            text = re.sub(r"^(\*|\d+\.|\[\d+\]) ", "", text)  # list markers
            if _is_prose(text) and not any(_is_underline(line) for line in lines):
                paragraphs.append(text)
    # Topics share passages; duplicates would leak training text into validation.
    return list(dict.fromkeys(paragraphs))


def _is_prose(text: str) -> bool:
    # Grammar rules and code are symbol-heavy; sentences are mostly letters and spaces.
    letters = sum(c.isalpha() or c == " " for c in text)
    return (
        len(text) >= 60 and text[0].isupper() and text[-1] in ".:)" and letters >= 0.85 * len(text)
    )


def _is_underline(line: str) -> bool:
    return re.fullmatch(r"([*=\-^~+])\1+", line) is not None


def corpus_splits(seed: int) -> tuple[list[str], list[str]]:
    """The prose paragraphs as (train, validation), the corpus's held-out share drawn by seed."""
    paragraphs = prose_paragraphs()
    rng = random.Random(f"{seed}:corpus")
    held_out = set(
        rng.sample(range(len(paragraphs)), round(len(paragraphs) * CORPUS_VALIDATION_FRACTION))
    )
    train = [p for i, p in enumerate(paragraphs) if i not in held_out]
    validation = [p for i, p in enumerate(paragraphs) if i in held_out]
    return train, validation


def _write_corpus(out: Path, seed: int) -> SplitPaths:
    train, validation = corpus_splits(seed)
    # Blank lines between paragraphs, as in WikiText.
    return SplitPaths(
        train=_write(out / "train.txt", "\n\n".join(train) + "\n"),
        validation=_write(out / "validation.txt", "\n\n".join(validation) + "\n"),
    )


# --- classification: review sentences; negation and "but" clauses make word counts misleading ---

# fmt: off
ASPECTS = {
    "film": ["the acting", "the plot", "the script", "the soundtrack", "the ending", "the pacing",
             "the dialogue", "the camera work", "the cast", "the special effects"],
    "restaurant": ["the food", "the service", "the staff", "the dessert", "the wine list",
                   "the atmosphere", "the portions", "the menu", "the coffee"],
    "hotel": ["the room", "the bed", "the breakfast", "the location", "the view", "the pool",
              "the reception", "the bathroom"],
    "phone": ["the battery", "the screen", "the camera", "the speaker", "the design",
              "the software", "the charger", "the case"],
    "book": ["the story", "the characters", "the writing", "the translation", "the cover",
             "the last chapter", "the main character"],
}
SUBJECTS = {
    "film": ["the film", "this movie", "the sequel", "this documentary"],
    "restaurant": ["the restaurant", "this place", "the bistro", "this cafe"],
    "hotel": ["the hotel", "this resort", "the guesthouse"],
    "phone": ["the phone", "this tablet", "the laptop", "this device"],
    "book": ["the book", "this novel", "the memoir", "this collection"],
}
ADJECTIVES = {
    True: ["good", "great", "excellent", "wonderful", "superb", "delightful", "charming",
           "brilliant", "solid", "enjoyable", "impressive", "lovely", "fantastic", "memorable",
           "pleasant", "clever", "gripping", "reliable", "fresh", "elegant"],
    False: ["bad", "awful", "terrible", "dull", "boring", "disappointing", "mediocre", "poor",
            "bland", "clumsy", "tedious", "weak", "forgettable", "annoying", "sloppy", "messy",
            "lifeless", "unpleasant", "flimsy", "overpriced"],
}
INTENSIFIERS = ["", "", "", "very ", "really ", "truly ", "extremely ", "incredibly ", "quite ",
                "rather ", "genuinely ", "absolutely ", "surprisingly "]
LINKS = ["was", "is", "felt", "seemed", "turned out to be", "looked"]
NEGATIONS = ["was not", "wasn't", "was never", "is not", "isn't", "did not feel", "was hardly"]
CONTRASTS = ["{a}, but {b}", "although {a}, {b}", "{a}; however, {b}", "{a}, yet {b}",
             "{a}, though in the end {b}", "even if {a}, {b}"]
VERDICTS = {
    True: ["I loved {s}", "I would recommend {s} to anyone", "{s} was worth every penny",
           "I would gladly choose {s} again", "I really enjoyed {s}", "{s} exceeded my expectations",
           "I have no complaints about {s}"],
    False: ["I would not recommend {s}", "{s} was a waste of money", "I regret choosing {s}",
            "I will never choose {s} again", "{s} fell short of my expectations",
            "I wanted to like {s}, but I couldn't", "I have nothing good to say about {s}"],
}
OPENERS = ["", "", "", "", "Honestly, ", "Overall, ", "In my opinion, ", "To be fair, ",
           "Frankly, ", "All in all, "]
FILLERS = ["", "", "", "", " It was my first time.", " I had heard a lot about it.",
           " We went last weekend.", " My friend suggested it.", " I paid full price."]


# fmt: on


def review(rng: random.Random, positive: bool) -> str:
    """One review sentence whose sentiment is `positive`."""
    domain = rng.choice(sorted(ASPECTS))
    form = rng.choices(["plain", "negated", "contrast", "verdict"], weights=[50, 20, 15, 15])[0]
    if form == "plain":
        body = _clause(rng, rng.choice(ASPECTS[domain]), positive)
    elif form == "negated":
        # "was not bad" is praise: the negated adjective has the opposite polarity.
        adjective = rng.choice(ADJECTIVES[not positive])
        ending = rng.choice(["", "", " at all"])
        body = f"{rng.choice(ASPECTS[domain])} {rng.choice(NEGATIONS)} {adjective}{ending}"
    elif form == "contrast":
        # The clause after the contrast word decides; both polarities appear in the words.
        first_aspect, second_aspect = rng.sample(ASPECTS[domain], 2)
        first = _clause(rng, first_aspect, not positive)
        second = _clause(rng, second_aspect, positive)
        body = rng.choice(CONTRASTS).format(a=first, b=second)
    else:
        body = rng.choice(VERDICTS[positive]).format(s=rng.choice(SUBJECTS[domain]))
    sentence = rng.choice(OPENERS) + body
    return sentence[0].upper() + sentence[1:] + "." + rng.choice(FILLERS)


def _clause(rng: random.Random, aspect: str, positive: bool) -> str:
    adjective = rng.choice(INTENSIFIERS) + rng.choice(ADJECTIVES[positive])
    return f"{aspect} {rng.choice(LINKS)} {adjective}"


def reviews(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """`count` distinct (text, label) pairs, labels balanced."""
    seen: set[str] = set()
    out = []
    while len(out) < count:
        positive = len(out) % 2 == 0
        text = review(rng, positive)
        if text not in seen:
            seen.add(text)
            out.append((text, "positive" if positive else "negative"))
    rng.shuffle(out)
    return out


def _write_classification(out: Path, cfg: SampleData, seed: int) -> TablePaths:
    n_train, n_val = split_sizes(
        cfg.classification_examples, cfg.validation_fraction, "classification_examples"
    )
    # Drawn together so that no validation sentence repeats a training one.
    rows = reviews(random.Random(f"{seed}:classification"), n_train + n_val)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["text", "label"])
    writer.writerows(rows[:n_train])
    lines = [json.dumps({"text": t, "label": label}) + "\n" for t, label in rows[n_train:]]
    return TablePaths(
        train=_write(out / "train.csv", table.getvalue()),
        validation=_write(out / "validation.jsonl", "".join(lines)),
        text_column="text",
        label_column="label",
    )


# --- NER: news-style sentences; slots in {braces} are filled with entities or numbers ---

# fmt: off
FIRST_NAMES = ["Anna", "Peter", "Maria", "John", "Elena", "David", "Sofia", "Michael", "Laura",
               "Thomas", "Yuki", "Ahmed", "Chen", "Olga", "Carlos", "Fatima", "Lars", "Priya",
               "Kofi", "Ingrid", "Mateo", "Amara", "Henrik", "Leila", "Pavel", "Grace", "Tomas",
               "Nadia", "Owen", "Rosa", "Samuel", "Hana", "Viktor", "Esther", "Jamal", "Clara"]
LAST_NAMES = ["Smith", "Novak", "Garcia", "Muller", "Rossi", "Tanaka", "Okafor", "Johansson",
              "Kowalski", "Dubois", "Silva", "Petrov", "Nguyen", "Haddad", "O'Brien", "van Dijk",
              "Lindqvist", "Mensah", "Moreau", "Ivanova", "de la Cruz", "Fischer", "Costa",
              "Yilmaz", "Keller", "Andersen", "Bauer", "Sato", "Popescu", "Walsh", "Horvat",
              "Ferreira", "Kim", "Schmidt", "Duarte", "Lopez"]
LOCATIONS = ["Paris", "Berlin", "New York", "Buenos Aires", "Lagos", "Oslo", "Cape Town",
             "Hong Kong", "Rio de Janeiro", "Kyoto", "Madrid", "Nairobi", "South Africa", "Brazil",
             "Canada", "New Zealand", "Sri Lanka", "Poland", "Vienna", "Lisbon", "San Francisco",
             "Mexico City", "Indonesia", "Egypt", "Chile", "Istanbul", "Dublin", "Los Angeles",
             "Saudi Arabia", "Manila", "Prague", "Hamburg", "Sweden", "Kenya", "North Carolina"]
ORGANIZATIONS = ["United Nations", "Red Cross", "World Bank", "Acme Corp", "Northwind Traders",
                 "Bank of Canada", "European Commission", "Reuters", "Nordic Steel Group",
                 "General Motors", "Ajax", "Real Madrid", "Interpol", "Greenpeace",
                 "Deutsche Bank", "Toyota", "Boeing", "Federal Reserve", "Apex Mining",
                 "Harbor Insurance", "Celtic", "Oxford University", "Blue Sky Airlines",
                 "Sunrise Foods", "Finance Ministry", "Supreme Court", "Kestrel Energy",
                 "Atlas Telecom", "National Theatre", "Silverline Motors"]
NATIONALITIES = ["German", "French", "Brazilian", "Japanese", "Kenyan", "Polish", "Canadian",
                 "Egyptian", "Swedish", "Mexican", "Irish", "Chilean", "Turkish", "Dutch",
                 "Italian", "Nigerian", "Korean", "Portuguese", "Danish", "Indian"]
EVENTS = ["World Cup", "Olympic Games", "Tour de France", "Nobel Prize", "Grand Prix",
          "Davis Cup", "Champions League", "Paris Air Show", "Golden Globe", "Ryder Cup",
          "Venice Biennale", "Chelsea Flower Show", "Booker Prize", "Africa Cup of Nations"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
NER_TEMPLATES = [
    "{PER} said on {DAY} that {ORG} would open an office in {LOC} .",
    "{ORG} shares rose {NUM} percent in {LOC} on {DAY} .",
    "The {NAT} striker {PER} scored twice as {ORG} beat {ORG} {NUM} - {NUM} .",
    "{PER} will lead the {NAT} delegation to {LOC} next week .",
    "Police in {LOC} arrested {NUM} people on {DAY} , a spokesman for {ORG} said .",
    "{PER} ( {LOC} ) {NUM} {NUM}",
    "{LOC} {DATE}",
    "{ORG} said it had appointed {PER} as finance director .",
    "Talks between {LOC} and {LOC} ended without agreement in {LOC} .",
    "{PER} won the {EVENT} in {LOC} on {DAY} .",
    "The {NAT} government denied the report , {PER} told {ORG} .",
    "{PER} , who joined {ORG} in {YEAR} , now lives in {LOC} .",
    "Analysts at {ORG} expect the {NAT} economy to grow by {NUM} percent .",
    "{ORG} and {ORG} agreed to merge , creating the largest bank in {LOC} .",
    "She met {PER} and {PER} at the {EVENT} in {LOC} .",
    "Rain delayed play in {LOC} , where {PER} leads by {NUM} strokes .",
    "{ORG} fined {PER} after the {EVENT} .",
    "The {EVENT} returns to {LOC} in {YEAR} , organisers said .",
    "{NAT} officials met {PER} of {ORG} in {LOC} .",
    "Prices fell for a third day on {DAY} as traders waited for data .",
    "The talks will resume next week , officials said .",
    "{PER} , the {NAT} champion , withdrew from the {EVENT} with an injury .",
    "Flights between {LOC} and {LOC} were cancelled because of a strike at {ORG} .",
    "Earlier , {PER} had criticised {ORG} for its plans in {LOC} .",
]
# Slot -> entity type and the names that fill it; PER is built from first and last names.
ENTITY_SLOTS = {"LOC": ("LOC", LOCATIONS), "ORG": ("ORG", ORGANIZATIONS),
                "NAT": ("MISC", NATIONALITIES), "EVENT": ("MISC", EVENTS)}

# Slots filled with one untagged token.
PLAIN_SLOTS = {
    "DAY": lambda rng: rng.choice(DAYS),
    "NUM": lambda rng: str(rng.randint(1, 60)),
    "YEAR": lambda rng: str(rng.randint(1980, 2024)),
    "DATE": lambda rng: f"{rng.randint(1990, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
}
# fmt: on


def name_pools(rng: random.Random, validation: bool) -> dict[str, list[str]]:
    """Names per list; training sees only part of each list, validation sees all."""
    lists = {"FIRST": FIRST_NAMES, "LAST": LAST_NAMES}
    lists.update({slot: names for slot, (_, names) in ENTITY_SLOTS.items()})
    pools = {}
    for key, names in lists.items():
        shuffled = rng.sample(names, len(names))
        seen = len(names) - round(len(names) * UNSEEN_NAME_FRACTION)
        pools[key] = shuffled if validation else shuffled[:seen]
    return pools


def ner_sentence(rng: random.Random, pools: dict[str, list[str]]) -> list[tuple[str, str]]:
    """(token, IOB2 tag) pairs of one sentence from a random template."""
    pairs = []
    for word in rng.choice(NER_TEMPLATES).split():
        slot = word.strip("{}")
        if slot == "PER":
            pairs += _entity(_person(rng, pools), "PER")
        elif slot in ENTITY_SLOTS:
            pairs += _entity(rng.choice(pools[slot]), ENTITY_SLOTS[slot][0])
        elif slot in PLAIN_SLOTS:
            pairs.append((PLAIN_SLOTS[slot](rng), "O"))
        else:
            pairs.append((word, "O"))
    return pairs


def _person(rng: random.Random, pools: dict[str, list[str]]) -> str:
    last = rng.choice(pools["LAST"])
    return last if rng.random() < 0.25 else f"{rng.choice(pools['FIRST'])} {last}"


def _entity(name: str, kind: str) -> list[tuple[str, str]]:
    tokens = name.split()
    return [(token, ("B-" if i == 0 else "I-") + kind) for i, token in enumerate(tokens)]


def _write_ner(out: Path, cfg: SampleData, seed: int) -> SplitPaths:
    n_train, n_val = split_sizes(cfg.ner_sentences, cfg.validation_fraction, "ner_sentences")
    rng = random.Random(f"{seed}:ner")
    paths = {}
    for split, count in (("train", n_train), ("validation", n_val)):
        pools = name_pools(random.Random(f"{seed}:ner-names"), validation=split == "validation")
        sentences = [ner_sentence(rng, pools) for _ in range(count)]
        # CoNLL layout: `token TAG` per line, a blank line after each sentence.
        text = "".join("".join(f"{t} {tag}\n" for t, tag in s) + "\n" for s in sentences)
        paths[split] = _write(out / f"{split}.conll", text)
    return SplitPaths(**paths)


# --- QA: short paragraphs about fictional people, companies and towns, with questions ---

# fmt: off
PLACE_HEADS = ["Ash", "Bel", "Cor", "Dun", "El", "Fen", "Glen", "Har", "Kil", "Lin", "Mar",
               "Nor", "Ock", "Pen", "Ros", "Stan", "Thorn", "Wex", "Brae", "Cald", "Hol", "Quen"]
PLACE_TAILS = ["ford", "wick", "mere", "ton", "by", "holm", "dale", "port", "stead", "bridge",
               "haven", "field", "moor", "gate"]
RIVER_TAILS = ["a", "ey", "wen", "ling", "burn", "ana"]
BRAND_HEADS = ["Vel", "Quor", "Zan", "Lum", "Ostr", "Kern", "Tav", "Brio", "Nex", "Sol", "Ardo"]
COMPANY_SUFFIXES = ["Industries", "Group", "Works", "Labs", "Company"]
BRAND_TAILS = ["trix", "ara", "ion", "ex", "ora", "ent", "ium", "ova"]
INDUSTRIES = [("software", "accounting software"), ("toy", "wooden trains"),
              ("food", "frozen dumplings"), ("shipping", "cargo drones"),
              ("textile", "wool blankets"), ("energy", "solar roof tiles"),
              ("medical", "hearing aids"), ("furniture", "folding desks"),
              ("bicycle", "electric bicycles"), ("chemical", "industrial glue")]
SUBJECTS_OF_STUDY = ["chemistry", "economics", "marine biology", "architecture", "mathematics",
                     "medieval history", "mechanical engineering", "music", "law", "geology"]
KNOWN_FOR = ["cheese market", "stone bridge", "glass museum", "apple orchards", "lighthouse",
             "clock tower", "textile mills", "botanical garden", "salt mines", "rowing club"]
OCCUPATIONS = ["miller", "merchant", "monk", "fisherman", "blacksmith", "wool trader"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
REGIONS = ["northern hills", "eastern plains", "southern coast", "western valleys", "lake district"]
FESTIVALS = ["Lantern Festival", "Harvest Fair", "River Games", "Winter Market", "Kite Festival"]

# fmt: on

# Each kind: facts are drawn by `_facts`; sentences mention them as {slot}; each question
# names the slot that answers it. Questions are paraphrases, not copies of the sentence.
QA_KINDS = {
    "person": {
        "sentences": [
            "{name} was born in {birthplace} in {birth_year}.",
            "{Pron} studied {subject} at the University of {university}.",
            "In {found_year}, {pron} founded {company}, a firm that makes {product}.",
            "Later in life {pron} moved to {home}, where {pron} taught {subject2} for {years} years.",
        ],
        "questions": [
            ("Where was {name} born?", "birthplace"),
            ("In what year was {name} born?", "birth_year"),
            ("What subject did {name} study at university?", "subject"),
            ("At which university did {name} study?", "university"),
            ("Who founded {company}?", "name"),
            ("What does {company} make?", "product"),
            ("When was {company} founded?", "found_year"),
            ("Where did {name} move later in life?", "home"),
            ("What did {name} teach?", "subject2"),
            ("For how many years did {name} teach?", "years"),
        ],
    },
    "company": {
        "sentences": [
            "{company} is a {industry} company based in {city}.",
            "It was founded in {found_year} by {founder}.",
            "Its best-known product is {product}.",
            "By {count_year} the company employed {employees} people.",
            "Since {ceo_year} it has been led by {ceo}.",
        ],
        "questions": [
            ("Where is {company} based?", "city"),
            ("Who founded {company}?", "founder"),
            ("In which year was {company} founded?", "found_year"),
            ("What is the best-known product of {company}?", "product"),
            ("How many people did {company} employ in {count_year}?", "employees"),
            ("Who leads {company}?", "ceo"),
            ("When did {ceo} start leading {company}?", "ceo_year"),
            ("What kind of company is {company}?", "industry"),
        ],
    },
    "town": {
        "sentences": [
            "{town} is a small town on the river {river} in the {region}.",
            "It was founded in {town_year} by {founder}, a {occupation}.",
            "Today about {population} people live there.",
            "The town is known for its {known_for}, and every {month} it hosts the {festival}.",
        ],
        "questions": [
            ("On which river does {town} lie?", "river"),
            ("In which part of the country is {town}?", "region"),
            ("Who founded {town}?", "founder"),
            ("When was {town} founded?", "town_year"),
            ("What was the occupation of the founder of {town}?", "occupation"),
            ("How many people live in {town}?", "population"),
            ("What is {town} known for?", "known_for"),
            ("In which month is the {festival} held?", "month"),
            ("Which festival does {town} host?", "festival"),
        ],
    },
}


def _place(rng: random.Random) -> str:
    return rng.choice(PLACE_HEADS) + rng.choice(PLACE_TAILS)


def _brand(rng: random.Random) -> str:
    return rng.choice(BRAND_HEADS) + rng.choice(BRAND_TAILS)


def _full_name(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def _facts(rng: random.Random) -> dict[str, str]:
    """Every fact any paragraph kind may mention; each kind uses its own slots."""
    industry, product = rng.choice(INDUSTRIES)
    born = rng.randint(1820, 1960)  # so every later year is in the past
    she = rng.random() < 0.5
    people = {key: _full_name(rng) for key in ("name", "founder", "ceo")}
    places = {key: _place(rng) for key in ("birthplace", "home", "city", "university", "town")}
    years = {
        "birth_year": born,
        "found_year": born + rng.randint(20, 40),
        "ceo_year": born + rng.randint(41, 44),
        "count_year": born + rng.randint(45, 60),
        "town_year": rng.randint(900, 1700),
    }
    return {
        **people,
        **places,
        **{key: str(year) for key, year in years.items()},
        "Pron": "She" if she else "He",
        "pron": "she" if she else "he",
        "river": rng.choice(PLACE_HEADS) + rng.choice(RIVER_TAILS),
        "company": f"{_brand(rng)} {rng.choice(COMPANY_SUFFIXES)}",
        "industry": industry,
        "product": product,
        "subject": rng.choice(SUBJECTS_OF_STUDY),
        "subject2": rng.choice(SUBJECTS_OF_STUDY),
        "years": str(rng.randint(3, 30)),
        "employees": f"{rng.randint(12, 9000):,}",
        "population": f"{rng.randint(800, 60000):,}",
        "region": rng.choice(REGIONS),
        "occupation": rng.choice(OCCUPATIONS),
        "known_for": rng.choice(KNOWN_FOR),
        "month": rng.choice(MONTHS),
        "festival": rng.choice(FESTIVALS),
    }


def render(template: str, facts: dict[str, str], starts: dict[str, int]) -> str:
    """Fill {slots}, recording in `starts` where each slot's text first starts."""
    out = ""
    for part in re.split(r"(\{\w+\})", template):
        if part.startswith("{"):
            starts.setdefault(part[1:-1], len(out))
            out += facts[part[1:-1]]
        else:
            out += part
    return out


def qa_paragraph(rng: random.Random, kind: str, ids: str) -> dict:
    """A SQuAD paragraph: context and 3-5 questions whose answers are located by offset."""
    spec, facts, starts = QA_KINDS[kind], _facts(rng), {}
    context = render(" ".join(spec["sentences"]), facts, starts)
    qas = []
    for n, (question, slot) in enumerate(rng.sample(spec["questions"], rng.randint(3, 5))):
        qas.append(
            {
                "id": f"{ids}-{n}",
                "question": render(question, facts, {}),
                "answers": [{"text": facts[slot], "answer_start": starts[slot]}],
            }
        )
    return {"context": context, "qas": qas}


def _squad(rng: random.Random, count: int, split: str) -> dict:
    """SQuAD v1.1 JSON with exactly `count` questions, one article per paragraph."""
    articles, total = [], 0
    while total < count:
        kind = rng.choice(sorted(QA_KINDS))
        paragraph = qa_paragraph(rng, kind, f"sample-{split}-{len(articles):05d}")
        paragraph["qas"] = paragraph["qas"][: count - total]
        total += len(paragraph["qas"])
        articles.append({"title": f"{kind} {len(articles)}", "paragraphs": [paragraph]})
    return {"version": "1.1", "data": articles}


def _write_qa(out: Path, cfg: SampleData, seed: int) -> SplitPaths:
    n_train, n_val = split_sizes(cfg.qa_examples, cfg.validation_fraction, "qa_examples")
    rng = random.Random(f"{seed}:qa")
    paths = {}
    for split, count in (("train", n_train), ("validation", n_val)):
        text = json.dumps(_squad(rng, count, split), ensure_ascii=False) + "\n"
        paths[split] = _write(out / f"{split}.json", text)
    return SplitPaths(**paths)


# --- generation: one prose sentence as the prompt, the next as its completion ---

# A sentence ends at . : ? or ! followed by a space and a capital letter.
_SENTENCE_END = re.compile(r"(?<=[.:?!])\s+(?=[A-Z])")
PLAIN_TEXT_SHARE = 0.2  # examples with an empty prompt: the pair as plain text


def sentence_pairs(paragraphs: list[str]) -> list[tuple[str, str]]:
    """Every (sentence, next sentence) of every paragraph, in order."""
    pairs = []
    for paragraph in paragraphs:
        sentences = _SENTENCE_END.split(paragraph)
        pairs += zip(sentences, sentences[1:], strict=False)
    return pairs


def _write_generation(out: Path, cfg: SampleData, seed: int) -> SplitPaths:
    """JSON lines of prompt -> completion from the corpus's own prose.

    Validation pairs come from the corpus's held-out paragraphs, so neither pretraining
    nor fine-tuning has read them.
    """
    n_train, n_val = split_sizes(
        cfg.generation_examples, cfg.validation_fraction, "generation_examples"
    )
    rng = random.Random(f"{seed}:generation")
    paths = {}
    for split, paragraphs, count in zip(
        ("train", "validation"), corpus_splits(seed), (n_train, n_val), strict=True
    ):
        pairs = sentence_pairs(paragraphs)
        lines = []
        for first, second in rng.sample(pairs, min(count, len(pairs))):
            if rng.random() < PLAIN_TEXT_SHARE:
                record = {"prompt": "", "completion": f"{first} {second}"}
            else:
                record = {"prompt": first, "completion": f" {second}"}
            lines.append(json.dumps(record, ensure_ascii=False))
        paths[split] = _write(out / f"{split}.jsonl", "\n".join(lines) + "\n")
    return SplitPaths(**paths)
