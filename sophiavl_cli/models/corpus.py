"""The fixed text the built-in tiny tokenizer is trained on.

Frozen on purpose: the tokenizer (and so the built-in model's bytes) is a function of this text,
so any edit here must bump `BUILD_VERSION` in `builtin.py`. It holds the SophiaVL-R1 prompt
strings (a copy, so a prompt-preset change cannot silently change the model), answer tags,
LaTeX, digits and plain English about the pictures the demo data draws.
"""

from __future__ import annotations

PROMPTS = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer.\n"
    " The reasoning process MUST BE enclosed within <think> </think> tagsdd. The final answer MUST BE enclosed"
    " within <answer> </answer> tags, for example <think>your_thinking_process</think>"
    "<answer>your_final_answer</answer>. If you use formula, please use LaTeX format.",
    "Please think about this question as if you were a human pondering deeply. Engage in an internal dialogue"
    " using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', 'let's break it down', etc, or"
    " other natural language thought expressions It's encouraged to include self-reflection or verification in"
    " the reasoning process. Provide your detailed reasoning between the <think> </think> tags, and then give"
    " your final answer between the <answer> </answer> tags.",
    " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> tags.",
    " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
    " Please transcribe text from the image/video clearly and provide your text answer within the"
    " <answer> </answer> tags.",
    " Please provide your text answer within the <answer> </answer> tags.",
    " Please provide the short text answer within the <answer> </answer> tags.",
    "You are a helpful assistant.",
    "You are an expert reasoning evaluator. I will give you a multimodal question and an answer. Your goal is"
    " to judge a reward process and give a score between 0 and 1. You should focus on whether the reasoning"
    " process is good rather than whether the final answer is correct.### Evaluation Criteria:\n"
    "- **Logical Soundness**: Does each step follow logically from the previous one?\n"
    "- **Correct Reasoning**: Are the methods and steps used appropriate and valid? Are the facts and lemmas"
    " correctly stated and applied?\n"
    "- **Error Identification**: Are there any logical fallacies, unsupported assumptions, or incorrect steps?\n"
    "- **Language Consistency**: Is the reasoning process conducted in a single, consistent language without"
    " mixing different languages?\n"
    "- **Redundancy**: Is the reasoning concise, without unnecessary repetition or extraneous steps?\n"
    "Provide a single score from **{0, 0.1, 0.2, ..., 1.0}** based on the reasoning quality, where:\n"
    " - **0**: Completely flawed reasoning\n- **1**: Perfectly sound reasoning\n"
    "- Intermediate values (e.g., 0.3, 0.7) should reflect partial correctness or minor errors.\n"
    "Be strict, reward the good process and punish the bad one. You should only output the score without"
    " any explanation.\n    Question: \n    Reasoning process: \n    Your response format:"
    " <answer>your_score</answer>",
)

ANSWERS = (
    "<think>Let me think. There are 3 red circles and 2 blue squares. Wait, one square is hidden behind"
    " the circle. Hmm, so the total is 3 + 3 = 6.</think><answer>6</answer>",
    "<think>Oh, I see. The question asks which option matches the picture. Let's break it down: the"
    " triangle is green, so option B is right.</think><answer>B</answer>",
    "<think>The word in the image reads HELLO WORLD in black letters on a white background.</think>"
    "<answer>HELLO WORLD</answer>",
    "<think>We subtract all small cubes: 7 - 4 = 3 objects are left.</think><answer>3</answer>",
    "<think>The area is $\\frac{1}{2} \\times 6 \\times 4 = 12$, so the answer is $12$.</think>"
    "<answer>12</answer>",
    "<think>By the Pythagorean theorem, $c = \\sqrt{a^2 + b^2} = \\sqrt{9 + 16} = 5$.</think>"
    "<answer>5</answer>",
    "<think>The angle $\\angle ABC = 180^\\circ - 60^\\circ - 45^\\circ = 75^\\circ$.</think>"
    "<answer>75</answer>",
    "<think>Let $x$ be the number of apples. Then $2x + 3 = 11$, so $x = 4$.</think><answer>4</answer>",
    "<think>The probability is $\\dfrac{3}{8} = 0.375$, which is $37.5\\%$.</think><answer>0.375</answer>",
    "<think>Using $\\sum_{i=1}^{n} i = \\frac{n(n+1)}{2}$ with $n = 10$ gives $55$.</think>"
    "<answer>55</answer>",
    "<think>The picture shows a small yellow sphere on the left of a large purple cylinder.</think>"
    "<answer>A yellow sphere next to a purple cylinder.</answer>",
    "<answer>A, C</answer> <answer>(B)</answer> <answer>D. 40</answer> <answer>\\boxed{7}</answer>",
)

LATEX = (
    "\\frac{a}{b} \\dfrac{1}{2} \\sqrt{2} \\sqrt[3]{x} x^{2} y_{1} \\pi \\theta \\alpha \\beta \\gamma \\Delta",
    "\\times \\div \\cdot \\pm \\leq \\geq \\neq \\approx \\infty \\sum \\prod \\int_{0}^{1} f(x)\\,dx",
    "\\sin \\cos \\tan \\log \\ln \\exp \\lim_{x \\to 0} \\left( \\right) \\{ \\} [ ] | \\mathrm{cm} \\text{m}",
    "\\angle \\triangle \\circ \\perp \\parallel \\overline{AB} \\vec{v} \\in \\cup \\cap \\subset \\emptyset",
    "\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix} \\boxed{42} 3.14 2.5 -7 1/3 50% 1,000 0.001 1e-6",
)

ENGLISH = (
    "The quick brown fox jumps over the lazy dog while the cat watches from the window.",
    "How many objects are in the picture? Count the red balls, the green cubes and the blue cylinders.",
    "Subtract all yellow spheres. How many objects are left? Add two more cubes and count again.",
    "What is the color of the large shiny object behind the small matte cube on the right side?",
    "Which shape has the most sides: a triangle, a square, a pentagon, a hexagon or a circle?",
    "Read the text written in the image and write it down exactly, keeping capital letters and spaces.",
    "Describe the image in one short sentence. Mention the main objects, their colors and positions.",
    "The chart shows the sales of three shops over four years; the second shop grew the fastest.",
    "A train leaves the station at nine o'clock and travels one hundred and twenty kilometres per hour.",
    "If the radius of the circle is four centimetres, what is its area? Use three point one four for pi.",
    "The triangle has two equal sides, so the base angles are equal and their sum is one hundred degrees.",
    "Look at the table: the first column lists the names, the second the ages and the third the scores.",
    "She bought five pencils, three notebooks and a ruler, and paid with a ten dollar note.",
    "The student solved the equation step by step, checked the result and wrote the final answer.",
    "Geometry, algebra, arithmetic, statistics, probability, physics, chemistry and biology questions.",
    "Left, right, top, bottom, above, below, behind, in front of, between, inside, outside, next to.",
    "Red, orange, yellow, green, blue, purple, pink, brown, black, white, gray, cyan, magenta, gold.",
    "Small, large, tiny, huge, tall, short, wide, narrow, thick, thin, bright, dark, shiny, matte, rubber.",
    "Circle, square, rectangle, triangle, star, diamond, ellipse, line, arrow, cube, sphere, cylinder, cone.",
    "One, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve, twenty, hundred, thousand.",
    "First, second, third, fourth, last, next, previous, more, fewer, less, most, least, equal, different.",
    "Therefore the answer must be correct. However, let me verify it once more to make sure nothing is wrong.",
    "Actually, I made a mistake in the previous step; the correct value is larger than I first thought.",
    "So the final result is the sum of all numbers in the list, divided by how many numbers there are.",
    "The model reads the question, looks at the image, reasons about what it sees and gives an answer.",
    "Reinforcement learning with verifiable rewards trains the policy to think before it answers.",
    "Please answer the question about the image. Options: A. 12; B. 15; C. 18; D. 21",
    "Options: (A) a cat (B) a dog (C) a bird (D) a fish. Choose the best option for the picture.",
    "Question: What is written on the sign? Answer: STOP. Question: How many wheels? Answer: 4.",
    "Water boils at one hundred degrees Celsius at sea level and freezes at zero degrees.",
    "The library opens on Monday, Tuesday, Wednesday, Thursday and Friday, and closes at weekends.",
    "January, February, March, April, May, June, July, August, September, October, November, December.",
    'He said: "I think it is raining." She replied: "No, the sky is clear and the sun is shining."',
    "Each row of the grid holds the same number of dots, so multiply the rows by the columns.",
    "The clock shows a quarter past three; the minute hand points at the three and the hour hand too.",
    "An apple, a banana, an orange, grapes, a lemon, a peach, a pear and a watermelon lie on the table.",
    "The bar for Tuesday is the tallest, which means most visitors came on that day of the week.",
    "Measure the length of the line with the ruler: it starts at zero and ends at seven centimetres.",
    "Is the number of blue objects greater than the number of red objects? Answer yes or no.",
    "The function f(x) = 2x + 1 is increasing; its graph is a straight line with slope two.",
    "system\nuser\nassistant\n The conversation has a system turn, a user turn and an assistant turn.",
    "Photographs, diagrams, maps, charts, tables, receipts, documents, screenshots and handwritten notes.",
    "The experiment measured temperature, pressure, velocity, acceleration, distance, mass and energy.",
    "Because the perimeter is twenty metres and the width is four, the length must be six metres.",
    "Investigate carefully: compare the heights, estimate the ratio, then compute the exact fraction.",
    "Whenever you are uncertain, reconsider the assumptions, recalculate, and explain your conclusion.",
    "Knowledge, understanding, judgement, observation, intuition, imagination, curiosity and patience.",
)

DIGITS = " ".join(str(n) for n in range(0, 1000, 7)) + " 0123456789 3.14159 2.71828 1/2 3/4 -1 +1 = % $"


def corpus_lines() -> list[str]:
    """All training text in a fixed order (the prompts twice, so their words merge early)."""
    return [*PROMPTS, *PROMPTS, *ANSWERS, *LATEX, *ENGLISH, DIGITS]
