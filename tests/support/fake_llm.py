"""An OpenAI-compatible HTTP server for tests: realistic, varied and sometimes faulty answers.

It recognises the pipeline's prompts by their header lines and answers as a base model would:
numbered instruction lists with near-duplicates, blacklisted words and numbering glitches mixed
in; Yes/No verdicts; instances with the faults the paper's filters exist for. HTTP faults (5xx,
429, garbage, empty choices) come at configurable rates or on demand with `fail_next`.

    python -m tests.support.fake_llm --port 8010 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import random
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import Body, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from app.selfinstruct.batched import BATCHED_RULES
from app.selfinstruct.prompts import (
    CLASSIFICATION_INSTRUCTION_HEADER,
    CLASSIFY_HEADER,
    CLASSIFY_QUESTION,
    INPUT_FIRST_HEADER,
    INSTRUCTION_HEADER,
    INVERSION_HEADER,
    OUTPUT_FIRST_HEADER,
)
from app.selfinstruct.unnatural import NO_CONSTRAINTS

KINDS = (
    "instructions",
    "classify",
    "instances_input_first",
    "instances_output_first",
    "inversion",
    "batched",
    "judge_instruction",
    "judge_answer",
    "judge_faithfulness",
    "unnatural_core",
    "unnatural_output",
    "rephrase",
    "unknown",
)

GRADER_KINDS = ("judge_answer", "judge_faithfulness")


@dataclass
class FakeLLMConfig:
    seed: int = 0
    latency_s: float = 0.0
    error_rate_5xx: float = 0.0
    rate_limit_rate: float = 0.0
    garbage_rate: float = 0.0
    empty_choices_rate: float = 0.0
    truncate_rate: float = 0.05
    model: str = "fake-model"
    require_api_key: str | None = None
    omit_usage: bool = False  # some servers send no usage block
    slow_rate: float = 0.0  # occasional slow answers...
    slow_s: float = 0.0  # ...taking this long
    batch_delay_s: float = 1.0  # Batch API: how long a batch runs before it is completed
    batch_refuse: bool = False  # Batch API: fail every batch at validation
    # Like greedy decoding: the same prompt always gets the same answer, whenever it is asked.
    deterministic: bool = False
    # Like a real model, write classification tasks about as often as the prompt shows them
    # (instead of a fixed 25%): what balancing the prompts relies on.
    imitate_mix: bool = False
    # Only answers to prompts of these kinds (see KINDS) are slow; empty: any kind.
    slow_kinds: tuple[str, ...] = ()
    # When set, exactly every n-th answer of slow_kinds is slow, in arrival order, instead of a
    # random slow_rate share: for tests that need some slow and some fast answers every time.
    slow_every: int = 0
    # Answers a broken server or a runaway model sends: NUL bytes, lone surrogates (valid JSON
    # escapes no UTF-8 database stores) or megabytes of text, in this share of answers.
    hostile_rate: float = 0.0
    hostile_bytes: int = 3_000_000  # the size of a runaway answer
    # The first answers to each kind of prompt are poisoned, one with each of HOSTILE_KINDS in
    # turn (a runaway answer first), so that every run exercises what each step does with each,
    # whatever the arrival order (hostile_rate alone is a draw).
    hostile_first: bool = False
    # Prompts of these kinds always get an HTTP 500, like a server that crashes on them.
    failing_kinds: tuple[str, ...] = ()
    # When set, every answer and faithfulness judge prompt gets this text, e.g. a model that
    # writes an example of its own instead of a grade.
    grader_answer: str | None = None


# --- vocabulary ------------------------------------------------------------------------------------

TOPICS = (
    "climate change", "the French Revolution", "black holes", "remote work", "urban gardening",
    "electric cars", "the human immune system", "medieval castles", "machine learning",
    "coral reefs", "the stock market", "ancient Egypt", "social media", "public libraries",
    "honey bees", "the Olympic Games", "volcanoes", "renewable energy", "jazz music",
    "the printing press", "sleep hygiene", "credit scores", "space tourism", "minimalism",
    "the water cycle", "video game design", "street food", "the Roman Empire", "vaccines",
    "plate tectonics", "online privacy", "marathon training", "chess openings", "tea ceremonies",
    "cryptocurrency", "the Renaissance", "wildfires", "nuclear fusion", "fast fashion",
    "the Silk Road", "quantum computing", "bird migration", "inflation", "the Cold War",
)  # fmt: skip
AUDIENCES = (
    "a five-year-old", "a high school student", "a new employee", "a retired engineer",
    "a tourist", "a busy parent", "a software developer", "a farmer", "a nurse", "a poet",
    "a skeptical investor", "a first-year medical student", "a shop owner", "a teenager",
)  # fmt: skip
ACTIVITIES = (
    "learning a new language", "saving money on groceries", "running a first marathon",
    "writing a cover letter", "staying focused while studying", "hosting a dinner party",
    "starting a podcast", "keeping houseplants alive", "negotiating a salary",
    "travelling with a toddler", "preparing for a job interview", "reducing food waste",
    "learning to play guitar", "moving to a new city", "making friends as an adult",
    "training a puppy", "planning a wedding", "quitting sugar", "working night shifts",
)  # fmt: skip
THINGS = (
    "a coffee shop", "a bicycle repair startup", "a cat", "a fantasy kingdom", "a podcast",
    "a vegan bakery", "a hiking club", "a smart fridge", "a children's book", "a robot",
    "a boutique hotel", "a mobile banking app", "a rock band", "a community garden",
    "a language school", "a food truck", "a dragon", "a lighthouse keeper", "a chess club",
)  # fmt: skip
LANGUAGES = ("Spanish", "German", "Japanese", "Italian", "Portuguese", "Korean", "Dutch", "Swahili")
TEXT_KINDS = (
    "product review", "news headline", "tweet", "customer email", "restaurant review",
    "movie plot summary", "job posting", "text message", "poem", "scientific abstract",
    "forum post", "hotel review", "speech transcript", "support ticket",
)  # fmt: skip
NUMBERS = ("two", "three", "four", "five", "six", "seven", "ten")
STYLES = ("formal", "humorous", "persuasive", "friendly", "concise", "dramatic", "poetic", "upbeat")

# Each template has several slots, so instructions built from it stay apart in ROUGE-L.
GENERAL_TEMPLATES = (
    "Explain {topic} to {audience} in {number} sentences.",
    "Give {number} practical tips for {activity}.",
    "Write a {style} short story about {thing} and {topic}.",
    "Suggest {number} creative names for {thing}.",
    "Translate the following {text_kind} into {language}.",
    "Summarize the {text_kind} about {topic} for {audience}.",
    "List the pros and cons of {activity} in a table with {number} rows.",
    "Compose a {style} email inviting {audience} to a talk on {topic}.",
    "Create a quiz with {number} questions about {topic}.",
    "Describe a typical day of {audience} who is {activity}.",
    "Rewrite the {text_kind} in a {style} tone.",
    "Plan a {number}-day schedule for {activity}.",
    "Write a {style} slogan for {thing}.",
    "Compare {topic} and {topic2} for {audience}.",
    "Generate a dialogue between {audience} and {audience2} about {topic}.",
    "Come up with {number} interview questions for {audience} about {activity}.",
    "Write a {style} product description for {thing}.",
    "What are {number} common misconceptions about {topic}?",
    "Draft a {style} apology message from {thing} to its customers.",
    "Recommend {number} books for {audience} interested in {topic}.",
    "How would you convince {audience} to try {activity}?",
    "Write a {style} limerick about {thing}.",
    "Outline a lesson plan on {topic} for {audience}.",
    "Brainstorm {number} ways {thing} could use {topic} to attract visitors.",
    "Answer the question about {topic} as if you were {audience}.",
    "Turn the notes on {topic} into a {style} paragraph.",
    "Estimate how long {activity} takes and explain your reasoning.",
    "Write the opening line of a {style} novel set in {thing}.",
)  # fmt: skip
CLASSIFICATION_TEMPLATES = (
    "Classify the sentiment of the {text_kind} about {topic} as positive, negative, or neutral.",
    "Is the following {text_kind} written by a human or a machine? Answer human or machine.",
    "Tell me whether the claim about {topic} is true or false.",
    "Detect whether the {text_kind} contains sarcasm: yes or no.",
    "Categorize the {text_kind} into sports, politics, science, or entertainment.",
    "Identify the main argument of the {text_kind} and rate its strength from 1 to 5.",
    "Decide whether the {text_kind} is suitable for {audience}: yes or no.",
    "Is it likely that {audience} would enjoy {activity}? Answer yes or no.",
    "Label the {text_kind} as urgent or not urgent for {thing}.",
    "Which of the {number} options about {topic} is the odd one out?",
    "Detect the language of the {text_kind}: {language}, English, or other.",
    "Classify the question about {topic} as factual or opinion-based.",
    "Given a {text_kind} from {thing}, tell me if the writer sounds angry, calm, or excited.",
    "Predict whether {audience} will finish {activity} within {number} weeks: yes or no.",
    "Sort each {text_kind} into praise, complaint, or question for {thing}.",
    "Decide whether the advice on {activity} is safe or risky for {audience}.",
    "Tell me if the statement about {topic} is a fact or an opinion.",
    "Which department of {thing} should answer this {text_kind}: sales, support, or billing?",
    "Rate the {text_kind} on {topic} as easy, medium, or hard to read for {audience}.",
    "Is the argument about {topic} in the {text_kind} logically valid? Answer yes or no.",
    "Classify the {style} {text_kind} by its intended reader: child, adult, or expert.",
    "Detect whether the two {text_kind}s about {topic} say the same thing.",
)  # fmt: skip
# A sentence added to half the tasks; varies wording far more than the cores alone.
CONSTRAINTS = (
    "Keep it under {count} words.", "Use bullet points.", "Avoid technical jargon.",
    "Include at least one concrete example.", "Make it suitable for {audience}.",
    "End with a question for the reader.", "Mention {topic2} somewhere.",
    "Use a {style} voice throughout.", "Do not use the letter z.", "Cite one real statistic.",
    "Write it as a numbered list.", "Start every sentence with a verb.",
)  # fmt: skip
WORD_COUNTS = ("30", "50", "80", "100", "150", "200")
BLACKLISTED = (
    "Describe the image of {thing} in detail.",
    "Draw a diagram that explains {topic}.",
    "Plot the growth of {topic} over ten years.",
    "Create a map of the places linked to {topic}.",
    "Open the file and count how often {topic} appears.",
    "Go to the website of {thing} and summarize it.",
    "Make a graph showing how {audience} spend their week.",
    "Choose the best picture for an article on {topic}.",
)  # fmt: skip
SHORT = ("Sort numbers.", "Tell joke.", "Be creative.", "Summarize.", "Add numbers.")
PROGRAMS = (
    "Write a program that prints the first {number} prime numbers.",
    "Write a program to translate text into {language}.",
    "Write a program that counts the words in a {text_kind}.",
)
ODD_STARTS = (
    "- Explain {topic} to {audience}.",
    "* Give {number} tips for {activity}.",
    "¿Cómo se dice {thing} en {language}?",
    "Écris un poème sur {topic}.",
    '"Summarize the {text_kind} about {topic}."',
)

CLASSIFICATION_HINTS = (
    "classify", "sentiment", "categorize", "true or false", "yes or no", "detect", "is the",
    "is it", "tell me whether", "tell me if", "human or a machine", "decide whether", "which of",
    "label the",
)  # fmt: skip
NEEDS_INPUT_HINTS = ("following", "given", "the ", "this ")
LABEL_SETS = (
    ("Positive", "Negative", "Neutral"),
    ("Yes", "No"),
    ("True", "False"),
    ("Sports", "Politics", "Science", "Entertainment"),
    ("Human", "Machine"),
    ("Urgent", "Not urgent"),
)
SENTENCES = (
    "The delivery arrived two days late and the box was crushed.",
    "I could not stop smiling during the whole concert.",
    "The committee will meet again next Tuesday at noon.",
    "Our team finally shipped the new release after months of work.",
    "Honestly, the sequel is even better than the original.",
    "The recipe needs more salt, but the texture is perfect.",
    "Scientists found a new species of frog in the rainforest.",
    "The battery lasts all day, which surprised me.",
    "Traffic was terrible, so I missed the first half of the game.",
    "The museum opens a new exhibit on ancient trade routes next month.",
    "My landlord raised the rent again without any notice.",
    "The new bus line cut my commute in half.",
    "Nobody at the front desk knew where my reservation went.",
    "The senator promised to vote against the bill on Friday.",
)  # fmt: skip
OUTPUT_OPENERS = (
    "Here is a short answer:", "In brief,", "One way to put it:", "Sure.", "Answer:",
    "A good response would be:", "Consider this:",
)  # fmt: skip


def _fill(template: str, rng: random.Random) -> str:
    topic, topic2 = rng.sample(TOPICS, 2)
    audience, audience2 = rng.sample(AUDIENCES, 2)
    return template.format(
        topic=topic,
        topic2=topic2,
        audience=audience,
        audience2=audience2,
        activity=rng.choice(ACTIVITIES),
        thing=rng.choice(THINGS),
        language=rng.choice(LANGUAGES),
        text_kind=rng.choice(TEXT_KINDS),
        number=rng.choice(NUMBERS),
        style=rng.choice(STYLES),
        count=rng.choice(WORD_COUNTS),
    )


def new_instruction(
    rng: random.Random, *, classification: bool, classification_share: float = 0.25
) -> str:
    """A natural-sounding task; thousands of distinct ones come out of the tables above."""
    if classification or rng.random() < classification_share:
        core = _fill(rng.choice(CLASSIFICATION_TEMPLATES), rng)
    else:
        core = _fill(rng.choice(GENERAL_TEMPLATES), rng)
    if rng.random() < 0.5:
        return f"{core} {_fill(rng.choice(CONSTRAINTS), rng)}"
    return core


def _near_duplicate(text: str, rng: random.Random) -> str:
    """A small edit, as models often echo an example with a word changed."""
    words = text.split()
    if len(words) > 4:
        words.insert(rng.randrange(1, len(words)), rng.choice(("really", "briefly", "also")))
    return " ".join(words)


def _prompt_instructions(prompt: str) -> list[str]:
    items = []
    for line in prompt.splitlines()[1:]:
        number, _, rest = line.partition(". ")
        if number.isdigit() and rest:
            items.append(rest)
    return items


def _units(text: str) -> tuple[list[str], str]:
    """Words joined by spaces, or characters for scripts written without spaces."""
    return (text.split(), " ") if " " in text.strip() else (list(text), "")


def recombined_items(shown: list[str], rng: random.Random) -> list[str]:
    """For prompts in other languages: new tasks spliced from the shown ones (the head of one,
    the tail of another), and now and then a near-copy, all in the prompt's own script."""
    items = []
    for _ in range(rng.randint(3, 7)):
        first, second = rng.sample(shown, 2) if len(shown) > 1 else (shown[0], shown[0])
        (head, glue), (tail, _) = _units(first), _units(second)
        if rng.random() < 0.15 or len(head) < 2 or len(tail) < 2:
            items.append(glue.join(head[: max(1, len(head) - 1)]))  # one unit dropped
            continue
        cut_head, cut_tail = rng.randrange(1, len(head)), rng.randrange(1, len(tail))
        items.append(glue.join(head[:cut_head] + tail[cut_tail:]))
    return items


def instruction_items(prompt: str, rng: random.Random, *, imitate_mix: bool = False) -> list[str]:
    """What a base model appends to the numbered list: mostly new tasks, some faulty ones."""
    shown = _prompt_instructions(prompt)
    if shown and 2 * sum(not text.isascii() for text in shown) > len(shown):
        return recombined_items(shown, rng)
    classification = prompt.startswith(CLASSIFICATION_INSTRUCTION_HEADER)
    share = 0.25
    if imitate_mix and shown:
        share = sum(classify_answer(text) == " Yes" for text in shown) / len(shown)
    items = []
    for _ in range(rng.randint(3, 7)):
        roll = rng.random()
        if roll < 0.08 and shown:
            items.append(_near_duplicate(rng.choice(shown), rng))
        elif roll < 0.14:
            items.append(_fill(rng.choice(BLACKLISTED), rng))
        elif roll < 0.17:
            items.append(rng.choice(SHORT))
        elif roll < 0.19:
            items.append(_fill(rng.choice(PROGRAMS), rng))
        elif roll < 0.21:
            items.append(_fill(rng.choice(ODD_STARTS), rng))
        else:
            items.append(
                new_instruction(rng, classification=classification, classification_share=share)
            )
    return items


def instruction_answer(prompt: str, rng: random.Random, *, imitate_mix: bool = False) -> str:
    """The continuation after the prompt's last "N.", numbering glitches included."""
    number = len(_prompt_instructions(prompt)) + 1
    items = instruction_items(prompt, rng, imitate_mix=imitate_mix)
    parts = [f" {items[0]}"]
    for item in items[1:]:
        number += 2 if rng.random() < 0.05 else 1  # a gap in the numbering
        label = f"{number} ." if rng.random() < 0.05 else f"{number}."
        parts.append(f"\n{label} {item}")
    if rng.random() < 0.1:
        parts.append(f"\n{number + 1}.")  # a trailing empty item
    return "".join(parts) + "\n\n"


def _task_of(prompt: str) -> str:
    for line in reversed(prompt.splitlines()):
        if line.startswith("Task: "):
            return line[len("Task: ") :]
    return ""


def classify_answer(task: str) -> str:
    lowered = task.lower()
    return " Yes" if any(hint in lowered for hint in CLASSIFICATION_HINTS) else " No"


def _related_output(task: str, rng: random.Random) -> str:
    words = [w.strip(".,?!:;\"'") for w in task.split() if len(w) > 3]
    focus = " ".join(rng.sample(words, min(3, len(words)))) or "the request"
    return f"{rng.choice(OUTPUT_OPENERS)} {focus.lower()}, {rng.choice(SENTENCES).lower()}"


def input_first_answer(task: str, rng: random.Random) -> str:
    """One to five examples related to the task; now and then the faults filters catch."""
    lowered = task.lower()
    needs_input = any(hint in lowered for hint in NEEDS_INPUT_HINTS)
    if not needs_input and rng.random() < 0.8:
        return f"Output: {_related_output(task, rng)}\n\n"
    examples: list[str] = []
    inputs = rng.sample(SENTENCES, 5)
    for n in range(1, rng.randint(1, 5) + 1):
        source, output = inputs[n - 1], _related_output(task, rng)
        fault = rng.random()
        if fault < 0.04:
            output = ""
        elif fault < 0.07:
            output = source
        elif fault < 0.09:
            output = "The answer is:"
        elif fault < 0.11 and examples:  # an exact duplicate of the previous example
            source, output = examples[-1].split("\n")[1:3]
            source, output = source.removeprefix("Input: "), output.removeprefix("Output: ")
        examples.append(f"Example {n}\nInput: {source}\nOutput: {output}")
    if len(examples) > 1 and rng.random() < 0.04:  # same input, different output
        first_input = examples[0].split("\n")[1]
        examples[-1] = f"Example {len(examples)}\n{first_input}\nOutput: Something else entirely."
    return "\n".join(examples) + "\n\n"


def _labels_for(task: str, rng: random.Random) -> tuple[str, ...]:
    lowered = task.lower()
    for labels in LABEL_SETS:
        if all(label.lower() in lowered for label in labels):
            return labels
    return rng.choice(LABEL_SETS)


def output_first_answer(task: str, rng: random.Random) -> str:
    lines = []
    for label in _labels_for(task, rng):
        lines += [f"Class label: {label}", f"Sentence: {rng.choice(SENTENCES)}"]
    return "\n".join(lines) + "\n\n"


def garbage(rng: random.Random) -> str:
    return "".join(rng.choice("#@!?.;:-*") for _ in range(rng.randint(5, 40)))


HOSTILE_KINDS = ("nul", "surrogate", "huge")
FIRST_POISONS = ("huge", "surrogate", "nul")  # hostile_first's order


def poison(text: str, kind: str, rng: random.Random, size: int = 3_000_000) -> str:
    """`text` as a broken server might send it: NULs and escape codes sprinkled in, lone
    surrogates in the middle of words, or the answer followed by megabytes of repetition."""
    if kind == "huge":
        filler = "and so on " * (size // 10)
        return f"{text}{filler}"
    bad = (
        ("\x00", "\x1b[0m\x00", "\x07\x00\x00") if kind == "nul" else ("\ud800", "\udfff", "\udc00")
    )
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
        chars.insert(rng.randrange(len(chars) + 1), rng.choice(bad))
    return "".join(chars)


def apply_limits(text: str, stop: list[str], max_tokens: int) -> tuple[str, str]:
    """Cut at the first stop string, then at max_tokens whitespace tokens, like a server does."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    if cut >= 0:
        return _cap_tokens(text[:cut], max_tokens, "stop")
    return _cap_tokens(text, max_tokens, "stop")


def _cap_tokens(text: str, max_tokens: int, finish: str) -> tuple[str, str]:
    pieces = text.split(" ")
    if len(text.split()) > max_tokens:
        kept, seen = [], 0
        for piece in pieces:
            seen += bool(piece.strip())
            if seen > max_tokens:
                break
            kept.append(piece)
        return " ".join(kept), "length"
    return text, finish


def truncate(text: str, rng: random.Random) -> str:
    """What hitting max_tokens looks like: the answer stops in the middle of something."""
    pieces = text.split(" ")
    return " ".join(pieces[: rng.randint(1, max(1, len(pieces) - 1))])


def batched_answer(prompt: str, rng: random.Random) -> str:
    """Alpaca-style tasks after the prompt's "N. Instruction:", with the usual faults: near
    copies of a shown task, blacklisted words, empty outputs, and a few unreadable blocks."""
    shown = [
        line.split("Instruction:", 1)[1].strip()
        for line in prompt.splitlines()
        if ". Instruction:" in line and line.split("Instruction:", 1)[1].strip()
    ]
    number = len(shown) + 1
    blocks = []
    for _ in range(rng.randint(8, 20)):
        items = instruction_items(prompt, rng)
        instruction = shown and rng.random() < 0.05 and _near_duplicate(rng.choice(shown), rng)
        instruction = instruction or items[0]
        needs_input = any(h in instruction.lower() for h in NEEDS_INPUT_HINTS)
        given = rng.choice(SENTENCES) if needs_input else "<noinput>"
        output = "" if rng.random() < 0.04 else _related_output(instruction, rng)
        if rng.random() < 0.03:
            blocks.append(f"{number}. {instruction}")  # lost its labels
        else:
            blocks.append(
                f"{number}. Instruction: {instruction}\n{number}. Input:\n{given}\n"
                f"{number}. Output:\n{output}"
            )
        number += 1
    text = "\n###\n".join(blocks)
    return " " + text.split("Instruction:", 1)[1].lstrip() if "Instruction:" in text[:12] else text


def inversion_answer(task: str, rng: random.Random) -> str:
    """The reverse task on one line, as a base model writes it; now and then a useless stub."""
    if rng.random() < 0.15:
        return " ?\n"
    subject = task.rstrip(".").split(" ", 1)[-1].lower() if task else "the task"
    opener = rng.choice(("Given the result,", "Starting from the answer,", "From the output,"))
    return f" {opener} write the input for: {subject}.\nTask: something else"


def prompt_kind(prompt: str) -> str:
    tail = prompt.rstrip()[-40:]
    if prompt.startswith("Example 1\nInstruction:") and tail.endswith("Instruction:"):
        return "unnatural_core"
    if (
        prompt.startswith("Instruction:")
        and "\nConstraints:" in prompt
        and tail.endswith("Output:")
    ):
        return "unnatural_output"
    if prompt.startswith("Rephrase each task"):
        return "rephrase"
    if tail.endswith("Verdict:"):
        return "judge_instruction"
    if tail.endswith("Grade (1, 2 or 3):"):
        return "judge_answer"
    if tail.endswith("Faithfulness (1, 2 or 3):"):
        return "judge_faithfulness"
    if prompt.startswith(INVERSION_HEADER):
        return "inversion"
    if BATCHED_RULES in prompt[:1000]:
        return "batched"
    if prompt.startswith(CLASSIFY_HEADER) or prompt.rstrip().endswith(CLASSIFY_QUESTION):
        return "classify"
    if prompt.startswith(OUTPUT_FIRST_HEADER):
        return "instances_output_first"
    if prompt.startswith(INPUT_FIRST_HEADER):
        return "instances_input_first"
    if prompt.startswith((INSTRUCTION_HEADER, CLASSIFICATION_INSTRUCTION_HEADER)):
        return "instructions"
    return "unknown"


def answer_for(prompt: str, kind: str, rng: random.Random, *, imitate_mix: bool = False) -> str:
    """The model's raw continuation of a prompt of this kind."""
    if kind == "instructions":
        return instruction_answer(prompt, rng, imitate_mix=imitate_mix)
    if kind == "classify":
        return classify_answer(_task_of(prompt))
    if kind == "instances_input_first":
        return input_first_answer(_task_of(prompt), rng)
    if kind == "instances_output_first":
        return output_first_answer(_task_of(prompt), rng)
    if kind == "inversion":
        return inversion_answer(_task_of(prompt), rng)
    if kind == "batched":
        return batched_answer(prompt, rng)
    if kind.startswith("judge_"):
        return judge_answer(prompt, kind, rng)
    if kind == "unnatural_core":
        return unnatural_core_answer(prompt, rng)
    if kind == "unnatural_output":
        return unnatural_output_answer(prompt, rng)
    if kind == "rephrase":
        return rephrase_answer(prompt, rng)
    return " I am not sure what you mean."


def unnatural_core_answer(prompt: str, rng: random.Random) -> str:
    """The next example after the demonstrations: mostly new, sometimes a copy or malformed."""
    shown = re.findall(r"(?m)^Instruction: (.*)$", prompt)
    roll = rng.random()
    if roll < 0.1 and shown:
        instruction = _near_duplicate(rng.choice(shown), rng)
    else:
        instruction = new_instruction(rng, classification=roll > 0.75)
    given = rng.choice(SENTENCES) if rng.random() < 0.8 else "None"
    if any(hint in instruction.lower() for hint in CLASSIFICATION_HINTS):
        labels = rng.choice(LABEL_SETS)
        constraints = "The output should be one of: " + ", ".join(f'"{x}"' for x in labels) + "."
    else:
        constraints = NO_CONSTRAINTS
    if rng.random() < 0.05:
        return f" {instruction}\nInput: {given}\n\n"  # the constraints line is missing
    return f" {instruction}\nInput: {given}\nConstraints: {constraints}\n\nExample 5\n"


def unnatural_output_answer(prompt: str, rng: random.Random) -> str:
    labels = re.findall(r'"([^"]+)"', _judged_field(prompt, "Constraints"))
    if rng.random() < 0.05:
        return " "
    if labels:
        return f" {rng.choice(labels)}\n\nInstruction:"
    return f" {_related_output(_judged_field(prompt, 'Instruction'), rng)}\n\nInstruction:"


def rephrase_answer(prompt: str, rng: random.Random) -> str:
    """Rephrasings of the last task: some good, an exact copy and a too-short one now and then."""
    count = int(re.search(r"in (\d+) different ways", prompt).group(1))  # type: ignore[union-attr]
    task = prompt.rsplit("\n\nTask: ", 1)[-1].split("\n", 1)[0]
    body = task.rstrip(".?!")
    lowered = body[:1].lower() + body[1:]
    options = [
        f"Please {lowered}.", f"Your job is to {lowered}.", f"{body}, and keep it concise.",
        f"Here is a task for you: {lowered}.", f"I need you to {lowered}.",
        f"Could you {lowered}?", task, "Do it now.",
    ]  # fmt: skip
    chosen = rng.sample(options, min(count, len(options)))
    return (
        " "
        + "\n".join(f"{n}. {text}" if n > 1 else text for n, text in enumerate(chosen, 1))
        + "\n\nTask:"
    )


JUDGE_DROPS = ("brainstorm", "ideas")  # the fake judge finds these tasks too open-ended


def _judged_field(prompt: str, name: str) -> str:
    match = re.search(rf"(?m)^{name}: (.*)$", prompt)
    return match.group(1) if match else ""


def judge_answer(prompt: str, kind: str, rng: random.Random) -> str:
    """Verdicts by simple rules, so tests know what to expect, with an unreadable one now and
    then."""
    if rng.random() < 0.05:
        return " Hmm, hard to say."
    if kind == "judge_instruction":
        task = _judged_field(prompt, "Task").lower()
        if any(word in task for word in JUDGE_DROPS):
            return " Drop - too open-ended to check an answer."
        return " Keep - clear and answerable in text."
    output = _judged_field(prompt, "Answer")
    if kind == "judge_faithfulness":
        words = {w.strip(".,!?").lower() for w in _judged_field(prompt, "Input").split()}
        shared = {w.strip(".,!?").lower() for w in output.split()} & words
        return " 3" if any(len(w) > 3 for w in shared) else " 1 - it ignores the input."
    if len(output) < 25:
        return " 1"
    return rng.choice((" 3", " 3", " 3", " 2", " Grade: 3", " 1"))


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 and status != 429 else "server_error"
    return JSONResponse(
        {"error": {"message": message, "type": kind}}, status_code=status, headers=headers
    )


def _as_json(reply: Any) -> Any:
    """A reply dict as JSON with ASCII escapes: a lone surrogate becomes the escape "\\ud800",
    as a real server's JSON encoder writes it, where UTF-8 encoding would fail."""
    if isinstance(reply, dict):
        return Response(json.dumps(reply), media_type="application/json")
    return reply


def _unauthorised(request: Request) -> JSONResponse:
    """Like OpenAI's answer, which echoes a masked copy of the key it was given."""
    given = request.headers.get("authorization", "").removeprefix("Bearer ")
    masked = f"{given[:5]}***{given[-3:]}" if len(given) > 8 else "***"
    return _error(401, f"Incorrect API key provided: {masked}.")


class FakeLLMServer:
    """Runs uvicorn in a background thread on 127.0.0.1; use as a context manager."""

    def __init__(self, config: FakeLLMConfig | None = None, *, port: int = 0) -> None:
        self.config = config or FakeLLMConfig()
        self.requests: list[dict[str, Any]] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._served = 0
        self._slow_candidates = 0  # answers of slow_kinds so far, for slow_every
        # Answers so far to each kind of prompt, for hostile_first.
        self._poisoned_kinds: collections.Counter[str] = collections.Counter()
        self._scripted: list[int] = []
        self.in_flight = 0
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._batch_started: dict[str, float] = {}
        self.max_in_flight = 0  # the most completion requests ever served at once
        self.arrivals: list[float] = []  # time.monotonic() of each completion request
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", port))  # bound now: no race for a "free" port
        self.port: int = self._socket.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # --- control -----------------------------------------------------------------------------

    def fail_next(self, count: int, status: int = 503) -> None:
        """The next `count` completion requests get this HTTP status (429 with Retry-After: 0)."""
        with self._lock:
            self._scripted.extend([status] * count)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.arrivals.clear()
            self.counts.clear()
            self._scripted.clear()
            self.max_in_flight = self.in_flight

    def serve_forever(self) -> None:
        """Serve in the calling thread until stopped."""
        if self._server is None:
            self._server = self._new_uvicorn_server()
        self._server.run(sockets=[self._socket])

    def _new_uvicorn_server(self) -> uvicorn.Server:
        config = uvicorn.Config(
            self.app(), host="127.0.0.1", port=self.port, log_level="warning", access_log=False
        )
        return uvicorn.Server(config)

    def start(self) -> FakeLLMServer:
        server = self._server = self._new_uvicorn_server()
        self._thread = threading.Thread(target=self.serve_forever, name="fake-llm", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake LLM server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None
        self._socket.close()

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- behaviour ---------------------------------------------------------------------------

    def _rng_for(self, prompt: str) -> random.Random:
        """Seed + prompt + how many requests came before: repeats differ, runs reproduce.
        Deterministic servers leave out the count: an answer depends on the prompt alone."""
        with self._lock:
            self._served += 1
            served = 0 if self.config.deterministic else self._served
        digest = hashlib.sha256(prompt.encode()).hexdigest()[:16]
        return random.Random(f"{self.config.seed}:{digest}:{served}")

    def _http_fault(self, rng: random.Random) -> JSONResponse | None:
        with self._lock:
            status = self._scripted.pop(0) if self._scripted else None
        roll = rng.random()
        if status is None and roll < self.config.error_rate_5xx:
            status = rng.choice((500, 502, 503))
        elif status is None and roll < self.config.error_rate_5xx + self.config.rate_limit_rate:
            status = 429
        if status is None:
            return None
        with self._lock:
            self.counts["fault_429" if status == 429 else "fault_5xx"] += 1
        if status == 429:
            return _error(429, "Rate limit reached, retry later", {"retry-after": "0"})
        return _error(status, f"upstream failure ({status})")

    def _is_slow(self, rng: random.Random, kind: str) -> bool:
        """Whether this answer is held back slow_s (counted as a fault_slow)."""
        roll = rng.random()  # drawn for every answer, so the other draws stay the same
        slow_kinds = self.config.slow_kinds
        if slow_kinds and kind not in slow_kinds:
            return False
        with self._lock:
            if self.config.slow_every:
                self._slow_candidates += 1
                slow = self._slow_candidates % self.config.slow_every == 0
            else:
                slow = roll < self.config.slow_rate
            if slow:
                self.counts["fault_slow"] += 1
        return slow

    def _hostile_kind(self, rng: random.Random, kind: str) -> str | None:
        """Which poison (HOSTILE_KINDS) this answer gets, if any."""
        if self.config.hostile_first:
            with self._lock:
                seen = self._poisoned_kinds[kind]
                self._poisoned_kinds[kind] += 1
            if seen < len(FIRST_POISONS):
                return FIRST_POISONS[seen]
        if self.config.hostile_rate and rng.random() < self.config.hostile_rate:
            return rng.choice(HOSTILE_KINDS)
        return None

    def _choices(
        self, body: dict[str, Any], prompt: str, *, chat: bool
    ) -> list[dict[str, Any]] | JSONResponse:
        rng = self._rng_for(prompt)
        if self.config.latency_s:
            time.sleep(self.config.latency_s * (0.5 + rng.random()))
        kind = prompt_kind(prompt)
        if self._is_slow(rng, kind):
            time.sleep(self.config.slow_s)
        fault = self._http_fault(rng)
        if fault is None and kind in self.config.failing_kinds:
            with self._lock:
                self.counts["fault_5xx"] += 1
            fault = _error(500, "upstream failure (500)")
        if fault is not None:
            return fault
        with self._lock:
            self.counts[kind] += 1
        if rng.random() < self.config.empty_choices_rate:
            with self._lock:
                self.counts["fault_empty_choices"] += 1
            return []
        if rng.random() < self.config.garbage_rate:
            with self._lock:
                self.counts["fault_garbage"] += 1
            text = garbage(rng)
        elif self.config.grader_answer is not None and kind in GRADER_KINDS:
            text = self.config.grader_answer
        else:
            text = answer_for(prompt, kind, rng, imitate_mix=self.config.imitate_mix)
        if rng.random() < self.config.truncate_rate:
            text = truncate(text, rng)
            finish = "length"
        else:
            stop = body.get("stop") or []
            stops = [stop] if isinstance(stop, str) else list(stop)
            max_tokens = int(body.get("max_tokens") or (4096 if chat else 16))  # OpenAI's defaults
            text, finish = apply_limits(text, stops, max_tokens)
        hostile = self._hostile_kind(rng, kind)
        if hostile is not None:
            with self._lock:
                self.counts[f"fault_{hostile}"] += 1
            text = poison(text, hostile, rng, self.config.hostile_bytes)
        if chat:
            message = {"role": "assistant", "content": text}
            return [{"index": 0, "message": message, "finish_reason": finish}]
        return [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]

    def _respond(self, body: dict[str, Any], prompt: str, *, chat: bool) -> Any:
        with self._lock:
            self.requests.append(body)
            self.arrivals.append(time.monotonic())
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            choices = self._choices(body, prompt, chat=chat)
        finally:
            with self._lock:
                self.in_flight -= 1
        if isinstance(choices, JSONResponse):
            return choices
        texts = [c["message"]["content"] if chat else c["text"] for c in choices]
        prompt_tokens = len(prompt.split())
        completion_tokens = sum(len(t.split()) for t in texts)
        reply: dict[str, Any] = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model") or self.config.model,
            "choices": choices,
        }
        if not self.config.omit_usage:
            reply["usage"] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
        return reply

    def _authorised(self, request: Request) -> bool:
        expected = self.config.require_api_key
        return expected is None or request.headers.get("authorization") == f"Bearer {expected}"

    def app(self) -> FastAPI:
        """Plain (sync) endpoints: FastAPI runs them in a thread pool, so latency overlaps."""
        app = FastAPI()

        @app.get("/v1/models")
        def models(request: Request) -> Any:
            if not self._authorised(request):
                return _unauthorised(request)
            model = {"id": self.config.model, "object": "model", "created": 0, "owned_by": "tests"}
            return {"object": "list", "data": [model] if self.config.model else []}

        @app.post("/v1/completions")
        def completions(request: Request, body: dict[str, Any] = Body(...)) -> Any:
            if not self._authorised(request):
                return _unauthorised(request)
            prompt = body.get("prompt", "")
            prompt = prompt[0] if isinstance(prompt, list) and prompt else prompt
            return _as_json(self._respond(body, str(prompt), chat=False))

        self._batch_routes(app)

        @app.post("/v1/chat/completions")
        def chat(request: Request, body: dict[str, Any] = Body(...)) -> Any:
            if not self._authorised(request):
                return _unauthorised(request)
            messages = body.get("messages") or [{}]
            return _as_json(self._respond(body, str(messages[-1].get("content", "")), chat=True))

        return app

    # --- the Batch API ------------------------------------------------------------------------

    def _batch_routes(self, app: FastAPI) -> None:
        """Files and batches as OpenAI serves them; a batch completes `batch_delay_s` after it
        was created, each line answered like an online request (faults included)."""

        @app.post("/v1/files")
        async def upload(request: Request) -> Any:
            if not self._authorised(request):
                return _unauthorised(request)
            form = await request.form()
            upload = form["file"]
            data = await upload.read()  # type: ignore[union-attr]
            file_id = f"file-{uuid.uuid4().hex[:24]}"
            with self._lock:
                self.files[file_id] = data
            return {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                    "filename": "requests.jsonl", "purpose": form.get("purpose", "batch")}  # fmt: skip

        @app.post("/v1/batches")
        def create_batch(request: Request, body: dict[str, Any] = Body(...)) -> Any:
            if not self._authorised(request):
                return _unauthorised(request)
            if body.get("input_file_id") not in self.files:
                return _error(400, "input_file_id: no such file")
            batch_id = f"batch_{uuid.uuid4().hex[:24]}"
            batch = {
                "id": batch_id, "object": "batch", "endpoint": body.get("endpoint"),
                "input_file_id": body["input_file_id"], "completion_window": "24h",
                "status": "validating", "created_at": int(time.time()), "output_file_id": None,
                "error_file_id": None, "errors": None, "metadata": body.get("metadata"),
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
            }  # fmt: skip
            with self._lock:
                self.batches[batch_id] = batch
                self._batch_started[batch_id] = time.monotonic()
                self.counts["batches_created"] += 1
            return batch

        @app.get("/v1/batches")
        def list_batches(request: Request) -> Any:
            if not self._authorised(request):
                return _unauthorised(request)
            newest_first = sorted(self.batches.values(), key=lambda b: -b["created_at"])
            return {"object": "list", "data": newest_first, "has_more": False}

        @app.get("/v1/batches/{batch_id}")
        def get_batch(batch_id: str, request: Request) -> Any:
            if not self._authorised(request):
                return _unauthorised(request)
            batch = self.batches.get(batch_id)
            if batch is None:
                return _error(404, f"No batch with id {batch_id}")
            self._advance(batch)
            return batch

        @app.post("/v1/batches/{batch_id}/cancel")
        def cancel_batch(batch_id: str, request: Request) -> Any:
            """As OpenAI: `cancelling` at once, `cancelled` at the next read; a batch that has
            already ended cannot be cancelled (HTTP 400)."""
            if not self._authorised(request):
                return _unauthorised(request)
            with self._lock:
                batch = self.batches.get(batch_id)
                if batch is None:
                    return _error(404, f"No batch with id {batch_id}")
                if batch["status"] not in ("validating", "in_progress", "cancelling"):
                    return _error(400, f"Cannot cancel a batch with status {batch['status']}.")
                if batch["status"] != "cancelling":
                    batch["status"] = "cancelling"
                    batch["cancelling_at"] = int(time.time())
                    self.counts["batches_cancelled"] += 1
                return batch

        @app.get("/v1/files/{file_id}/content")
        def file_content(file_id: str, request: Request) -> Any:
            if not self._authorised(request):
                return _unauthorised(request)
            if file_id not in self.files:
                return _error(404, f"No file with id {file_id}")
            return Response(self.files[file_id], media_type="application/octet-stream")

    def _advance(self, batch: dict[str, Any]) -> None:
        with self._lock:  # polls run in a thread pool: one of them answers the batch
            if batch["status"] == "cancelling":  # cancelled before any request was answered
                batch["status"] = "cancelled"
                batch["cancelled_at"] = int(time.time())
                return
            if batch["status"] not in ("validating", "in_progress"):
                return
            if self.config.batch_refuse:
                batch["status"] = "failed"
                message = "This model is not available in the Batch API."
                batch["errors"] = {
                    "object": "list",
                    "data": [{"code": "invalid", "message": message}],
                }
                return
            if time.monotonic() - self._batch_started[batch["id"]] < self.config.batch_delay_s:
                batch["status"] = "in_progress"
                return
            batch["status"] = "finalizing"
        lines = self.files[batch["input_file_id"]].decode().splitlines()
        outputs, errors = [], []
        for line in filter(None, lines):
            item = json.loads(line)
            chat = item["url"].endswith("/chat/completions")
            body = item["body"]
            prompt = body["messages"][-1]["content"] if chat else body["prompt"]
            reply = self._respond(body, prompt, chat=chat)
            if isinstance(reply, JSONResponse):
                response = {"status_code": reply.status_code, "body": json.loads(reply.body)}
            else:
                response = {"status_code": 200, "body": reply}
            entry = {"id": f"batch_req_{uuid.uuid4().hex[:12]}", "custom_id": item["custom_id"],
                     "response": response, "error": None}  # fmt: skip
            (outputs if response["status_code"] == 200 else errors).append(json.dumps(entry))
        with self._lock:
            for name, rows in (("output_file_id", outputs), ("error_file_id", errors)):
                if rows:
                    file_id = f"file-{uuid.uuid4().hex[:24]}"
                    self.files[file_id] = ("\n".join(rows) + "\n").encode()
                    batch[name] = file_id
        batch["request_counts"] = {"total": len(outputs) + len(errors),
                                   "completed": len(outputs), "failed": len(errors)}  # fmt: skip
        batch["status"] = "completed"
        batch["completed_at"] = int(time.time())


def run_fake_llm_main() -> None:
    """Serve in the foreground, for tests that need the LLM in a separate process."""
    parser = argparse.ArgumentParser(description="A fake OpenAI-compatible server for tests.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of HTTP 5xx answers")
    parser.add_argument("--rate-limit-rate", type=float, default=0.0)
    parser.add_argument("--garbage-rate", type=float, default=0.0)
    parser.add_argument("--truncate-rate", type=float, default=0.05)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--api-key", default=None, help="require this Bearer token")
    args = parser.parse_args()
    config = FakeLLMConfig(
        seed=args.seed,
        latency_s=args.latency,
        error_rate_5xx=args.error_rate,
        rate_limit_rate=args.rate_limit_rate,
        garbage_rate=args.garbage_rate,
        truncate_rate=args.truncate_rate,
        model=args.model,
        require_api_key=args.api_key,
    )
    server = FakeLLMServer(config, port=args.port)
    try:
        server.serve_forever()
    finally:
        server.stop()


if __name__ == "__main__":
    run_fake_llm_main()
