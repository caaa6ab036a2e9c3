"""Prompt text for the three Self-Instruct steps, in our own words of the paper's formats.

The exact text is part of the behaviour (tests pin it, and the test LLM server recognises the
prompts by these header lines), so change it only on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.selfinstruct.sampling import normalize_instruction

INSTRUCTION_HEADER = "Come up with a series of tasks:"
CLASSIFICATION_INSTRUCTION_HEADER = "Come up with a series of classification tasks, naming the possible output labels where you can:"
CLASSIFY_HEADER = (
    "Decide whether each task below is a classification task, that is, a task whose output is "
    "one of a small, finite set of labels."
)
CLASSIFY_QUESTION = "Is it classification?"
INPUT_FIRST_HEADER = (
    "Come up with examples for the following tasks. Give several examples when you can. "
    "If a task needs no extra input, write the output directly."
)
OUTPUT_FIRST_HEADER = (
    "Given a classification task and its possible class labels, write an input for each class "
    "label. If the task needs no input, just list the possible class labels."
)


# Step 2 few-shot examples: (task, is it classification?). Our own tasks, mixed domains.
CLASSIFY_EXAMPLES: tuple[tuple[str, bool], ...] = (
    ("Tell me whether this email is spam or not spam.", True),
    ("Write a thank-you note to a colleague who covered my shift.", False),
    ("Given a movie review, say if the reviewer liked the movie.", True),
    ("Suggest three names for a bakery that sells only sourdough bread.", False),
    ("Is the following statement a fact or an opinion?", True),
    ("Explain how a bill becomes a law in the United States.", False),
    ("Label each sentence as formal or informal.", True),
    ("Convert the temperature from Celsius to Fahrenheit.", False),
    (
        "Decide which of the three departments (sales, support, billing) should handle this ticket.",
        True,
    ),
    ("Find the longest word in the sentence.", False),
    ("Identify the language of the given text: English, French, Spanish or German.", True),
    ("Rewrite the paragraph so a ten-year-old can understand it.", False),
    ("Does the argument contain a logical fallacy? Answer yes or no.", True),
    ("Plan a three-day trip to Lisbon on a small budget.", False),
    ("Rate the difficulty of this math problem as easy, medium or hard.", True),
    ("Write a SQL query that returns the ten most recent orders.", False),
    ("Determine whether the two sentences are paraphrases of each other.", True),
    ("Summarize the news article in two sentences.", False),
    ("Predict whether the customer will churn based on the account notes: yes or no.", True),
    ("Give me a recipe that uses chickpeas and spinach.", False),
    ("Say whether the code snippet has a syntax error.", True),
    ("List the steps to change a flat bicycle tire.", False),
    ("Categorize the expense as food, transport, housing or other.", True),
    ("Compose a haiku about the first snow of winter.", False),
    ("Answer the trivia question: what is the capital of Australia?", False),
    ("Write a function that reverses a linked list.", False),
    ("Translate the sentence into Italian.", False),
    ("Generate a catchy slogan for a reusable water bottle.", False),
    ("Given a job posting and my resume, what are the main gaps?", False),
    ("Describe the water cycle in simple words.", False),
)


def _task_block(task: str, lines: Sequence[str]) -> str:
    return "\n".join([f"Task: {task}", *lines])


# Step 3, input first: (task, [(input, output), ...]); an empty input means no input is needed.
INPUT_FIRST_EXAMPLES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "Fix the grammar mistakes in the sentence.",
        (
            ("She don't like apples.", "She doesn't like apples."),
            ("Me and him goes to school together.", "He and I go to school together."),
        ),
    ),
    (
        "Suggest a healthy breakfast that takes less than ten minutes to make.",
        (("", "Greek yogurt with berries, a spoon of honey and a handful of walnuts."),),
    ),
    (
        "Solve the equation for x.",
        (("3x + 5 = 20", "x = 5"), ("2x - 7 = 9", "x = 8"), ("x / 4 = 6", "x = 24")),
    ),
    (
        "Write a polite email declining a meeting invitation.",
        (
            (
                "Meeting: quarterly budget review, Friday 3 pm.",
                "Hi Dana,\nThank you for the invitation to Friday's budget review. I have a "
                "conflict at that time, so I won't be able to attend. Could you share the notes "
                "afterwards?\nBest regards,\nSam",
            ),
        ),
    ),
    (
        "Give the capital city of the country.",
        (("Canada", "Ottawa"), ("Kenya", "Nairobi"), ("Peru", "Lima")),
    ),
    (
        "Explain what the Python function does in one sentence.",
        (
            (
                "def total(xs):\n    return sum(x for x in xs if x > 0)",
                "It returns the sum of the positive numbers in the list.",
            ),
        ),
    ),
    (
        "Name three habits that help people sleep better.",
        (
            (
                "",
                "Going to bed at the same time every night, avoiding screens an hour before "
                "bed, and keeping the bedroom cool and dark.",
            ),
        ),
    ),
    (
        "Turn the list of facts into a short paragraph.",
        (
            (
                "Mount Fuji; 3,776 m; active volcano; last erupted in 1707.",
                "Mount Fuji is an active volcano that rises 3,776 metres. Its last eruption "
                "was in 1707.",
            ),
        ),
    ),
    (
        "Find the odd one out and say why.",
        (
            (
                "apple, banana, carrot, cherry",
                "Carrot, because it is a vegetable and the others are fruits.",
            ),
            ("2, 4, 7, 8", "7, because it is the only odd number."),
        ),
    ),
    (
        "Write a short motivational quote about learning.",
        (("", "Every expert was once a beginner who refused to quit."),),
    ),
)

# Step 3, output first: (task, field name, [(label, input), ...]).
OUTPUT_FIRST_EXAMPLES: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    (
        "Classify the sentiment of the product review as positive, negative or neutral.",
        "Review",
        (
            ("Positive", "Arrived early and works perfectly. I'd buy it again."),
            ("Negative", "The handle broke after two days and support never replied."),
            ("Neutral", "It is a phone case. It fits the phone."),
        ),
    ),
    (
        "Tell me if the number is prime.",
        "Number",
        (("Yes", "13"), ("No", "21")),
    ),
    (
        "Is the sentence grammatically correct?",
        "Sentence",
        (
            ("Correct", "They have finished their homework."),
            ("Incorrect", "They has finished there homework."),
        ),
    ),
    (
        "Which continent is the country in?",
        "Country",
        (
            ("Asia", "Vietnam"),
            ("Europe", "Portugal"),
            ("Africa", "Ghana"),
            ("South America", "Chile"),
        ),
    ),
    (
        "Decide whether the email is spam.",
        "Email",
        (
            (
                "Spam",
                "Congratulations! You won a free cruise. Click here to claim within 24 hours.",
            ),
            ("Not spam", "Hi Ana, attached are the slides for tomorrow's lecture. See you at 10."),
        ),
    ),
    (
        "Given a statement, say whether it is a fact or an opinion.",
        "Statement",
        (
            ("Fact", "Water boils at 100 degrees Celsius at sea level."),
            ("Opinion", "Winter is the best season."),
        ),
    ),
    (
        "Does the code contain a bug? Answer yes or no.",
        "Code",
        (
            ("Yes", "def average(xs):\n    return sum(xs) / len(xs) + 1"),
            ("No", "def square(x):\n    return x * x"),
        ),
    ),
    (
        "Which of the two sentences is more formal?",
        "Sentences",
        (
            (
                "Sentence 1",
                "Sentence 1: I am writing to request an extension.\nSentence 2: can I get more time?",
            ),
            (
                "Sentence 2",
                "Sentence 1: gonna be late, sorry\nSentence 2: I apologise for my late arrival.",
            ),
        ),
    ),
    (
        "Identify the part of speech of the underlined word.",
        "Sentence",
        (
            ("Noun", "The _river_ flooded the village."),
            ("Verb", "Please _open_ the window."),
            ("Adjective", "She wore a _bright_ scarf."),
        ),
    ),
    (
        "Detect whether the customer message is a complaint, a question or praise.",
        "Message",
        (
            ("Complaint", "My order is three weeks late and nobody answers the phone."),
            ("Question", "Do you ship to Iceland?"),
            ("Praise", "Your staff were so helpful, thank you!"),
        ),
    ),
    (
        "Does the triangle with these side lengths exist?",
        "Sides",
        (("Yes", "3, 4, 5"), ("No", "1, 2, 10")),
    ),
    (
        "Choose the emotion expressed in the tweet: joy, anger, sadness or fear.",
        "Tweet",
        (
            ("Joy", "Just got the keys to our first home!!"),
            ("Anger", "Three hours on hold and then they hung up on me."),
            ("Sadness", "Saying goodbye to my old dog today."),
            ("Fear", "Strange noises in the attic again. I can't sleep."),
        ),
    ),
    (
        "Is the recipe vegetarian?",
        "Ingredients",
        (
            ("Yes", "lentils, onion, garlic, cumin, tomatoes, olive oil"),
            ("No", "rice, chicken thighs, saffron, peas, stock"),
        ),
    ),
    (
        "Does the conclusion follow from the premises?",
        "Argument",
        (
            (
                "Valid",
                "All metals conduct electricity. Copper is a metal. So copper conducts electricity.",
            ),
            ("Invalid", "Some birds cannot fly. Penguins are birds. So penguins can fly."),
        ),
    ),
)


def build_instruction_prompt(
    instructions: Sequence[str], *, classification_only: bool = False
) -> str:
    """Header, the numbered instructions, and the next number for the model to continue."""
    header = CLASSIFICATION_INSTRUCTION_HEADER if classification_only else INSTRUCTION_HEADER
    lines = [header]
    lines += [f"{n}. {normalize_instruction(text)}" for n, text in enumerate(instructions, 1)]
    lines.append(f"{len(instructions) + 1}.")
    return "\n".join(lines)


def _classify_block(task: str, answer: bool | None) -> str:
    verdict = "" if answer is None else (" Yes" if answer else " No")
    return f"Task: {task}\n{CLASSIFY_QUESTION}{verdict}"


_CLASSIFY_PREFIX = "\n\n".join(
    [CLASSIFY_HEADER, *(_classify_block(task, answer) for task, answer in CLASSIFY_EXAMPLES)]
)


def build_classification_prompt(instruction: str) -> str:
    """The fixed few-shot list, then the task; the model answers Yes or No."""
    return f"{_CLASSIFY_PREFIX}\n\n{_classify_block(normalize_instruction(instruction), None)}"


def _input_first_block(task: str, instances: Sequence[tuple[str, str]]) -> str:
    if len(instances) == 1 and not instances[0][0]:
        return _task_block(task, [f"Output: {instances[0][1]}"])
    lines = []
    for n, (inp, out) in enumerate(instances, 1):
        lines += [f"Example {n}", f"Input: {inp}", f"Output: {out}"]
    return _task_block(task, lines)


def _output_first_block(task: str, field: str, pairs: Sequence[tuple[str, str]]) -> str:
    lines = []
    for label, inp in pairs:
        lines += [f"Class label: {label}", f"{field}: {inp}"]
    return _task_block(task, lines)


_INPUT_FIRST_PREFIX = "\n\n".join(
    [INPUT_FIRST_HEADER, *(_input_first_block(t, xs) for t, xs in INPUT_FIRST_EXAMPLES)]
)
_OUTPUT_FIRST_PREFIX = "\n\n".join(
    [OUTPUT_FIRST_HEADER, *(_output_first_block(t, f, xs) for t, f, xs in OUTPUT_FIRST_EXAMPLES)]
)


def build_instance_prompt(instruction: str, *, is_classification: bool) -> str:
    """Worked tasks, then the new task; classification asks for the label first (output-first)
    so the labels are not all the same, as the paper found input-first biased them."""
    prefix = _OUTPUT_FIRST_PREFIX if is_classification else _INPUT_FIRST_PREFIX
    return f"{prefix}\n\nTask: {normalize_instruction(instruction)}\n"


# --- inversion: an LLM writes the instruction of the task that goes the other way -------------

INVERSION_HEADER = (
    "Each task below is followed by the reverse task: given the original output, produce the "
    "original input."
)
# Our own demonstrations: question answering becomes question generation, and so on.
INVERSION_EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        "Answer the question about the passage.",
        "Write a question about the passage whose answer is the given text.",
    ),
    (
        "Translate the sentence into French.",
        "Translate the French sentence back into English.",
    ),
    (
        "Summarize the article in one sentence.",
        "Write a short article that the given one-sentence summary could describe.",
    ),
)


def build_inversion_prompt(instruction: str) -> str:
    """Completion-style few-shot prompt; the model continues after the last "Reverse task:"."""
    blocks = [f"Task: {task}\nReverse task: {reverse}" for task, reverse in INVERSION_EXAMPLES]
    blocks.append(f"Task: {' '.join(instruction.split())}\nReverse task:")
    return INVERSION_HEADER + "\n\n" + "\n\n".join(blocks)
