"""Deterministic, seeded prompts for the benchmarks: filler, shared prefixes, chats, tools."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from jsonschema.validators import validator_for

if TYPE_CHECKING:
    from pydantic import JsonValue

# Ordinary lower-case English words, each a single token (after a space) in the tiny model's
# byte-level BPE trained on Python stdlib sources, and short in GPT/Qwen-style tokenizers too.
WORDS: tuple[str, ...] = tuple(
    """
    about above accept access action actual add after again allow already also always
    another any around avoid back based basic because been before begin being below best
    block body both bound break call called can cannot case cases chain change check child
    clear close code common compare complete condition connection contain content context
    control convert copy correct could count create current custom data date day default
    define delete description directly document does done during each either element else
    empty end entire entry equal error even event every exact example exist explicit extra
    false field file filter final find first flag follow following form format found free
    from full function group handle have header help here high how ignore include index
    information initial input insert instance instead interface internal into item just keep
    key kind know last later least left length level like limit line link list local lock
    long look loop low made main make match may mean member memory message method might
    missing mode module month more most must name need never new next node normal not note
    nothing now number object once one only open option order original other output over own
    pair parent part pass path pattern place point position possible present previous print
    process program public query quote random range rather read real reason record reference
    release remove replace request require reset result return right root row run safe same
    sample search second see select send sequence server set side signal simple since single
    size skip small some sort source space special split stack standard start state status
    step still stop stream string such support sure system table target test text than that
    the their them then there these they thing this those three through time title token top
    total tree true try two type under unknown until update use used useful user value
    version wait want was way week were when which while who width will with within without
    word would write year yet you zero
    """.split()
)

# Measured: 1000 filler words are about 1,100 tokens in the tiny model's tokenizer (words are
# single tokens, sentence full stops add one each); used only when no token counter is given.
TOKENS_PER_WORD = 1.1
_SENTENCE_WORDS = (8, 14)


class TokenCounter(Protocol):
    """Counts a text's tokens with the served model's tokenizer (e.g. vLLM's POST /tokenize)."""

    def __call__(self, text: str) -> int: ...


def _rng(seed: int | str, *purpose: object) -> random.Random:
    """Return a generator seeded from seed and purpose (str seeds hash stably across processes)."""
    return random.Random(":".join(str(part) for part in (seed, *purpose)))


def _filler_words(n_words: int, seed: int | str) -> list[str]:
    """Return the first n_words of the seed's word stream; sentences end with a full stop."""
    rng = _rng(seed, "filler")
    words: list[str] = []
    until_stop = rng.randint(*_SENTENCE_WORDS)
    for _ in range(n_words):
        word = rng.choice(WORDS)
        until_stop -= 1
        if until_stop == 0:
            word += "."
            until_stop = rng.randint(*_SENTENCE_WORDS)
        words.append(word)
    return words


def filler_text(n_words: int, seed: int | str) -> str:
    """Return n_words of seeded filler; a longer text of the same seed extends a shorter one."""
    return " ".join(_filler_words(n_words, seed))


def _join(lead: str, words: list[str]) -> str:
    """Join a lead-in and filler words with single spaces."""
    return " ".join([lead, *words]) if lead else " ".join(words)


def text_of_tokens(
    n_tokens: int,
    seed: int | str,
    count_tokens: TokenCounter | None = None,
    *,
    lead: str = "",
) -> str:
    """Return `lead` followed by seeded filler, about n_tokens long in total.

    Without a counter the length is estimated at TOKENS_PER_WORD. With one, a search on the number of
    filler words returns the longest text whose count is <= n_tokens (at most a word's tokens short). The
    search interpolates on the counts (about 4 counts for 1,300 tokens, where bisection needs 12: each is a
    /tokenize round trip), falling back to bisection whenever an interpolated guess fails to halve the
    bracket. When `lead` alone exceeds the budget, `lead` is returned.
    """
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    if count_tokens is None:
        lead_tokens = len(lead.split()) * TOKENS_PER_WORD
        n_words = max(0, round((n_tokens - lead_tokens) / TOKENS_PER_WORD))
        return _join(lead, _filler_words(n_words, seed))
    limit = 4 * n_tokens + 64
    high = max(8, round(n_tokens / TOKENS_PER_WORD) + 8)
    words = _filler_words(high, seed)
    counts: dict[int, int] = {}

    def count(k: int) -> int:
        if k not in counts:
            counts[k] = count_tokens(_join(lead, words[:k]))
        return counts[k]

    while count(high) <= n_tokens and high < limit:
        high *= 2
        words = _filler_words(high, seed)
        counts.clear()  # texts are prefixes of each other, but keep the cache simple and exact
    low = 0  # invariant: words[:low] fits (or low == 0); words[:high] does not (or high == limit)
    interpolate = True
    while high - low > 1:
        width = high - low
        middle = (low + high) // 2
        if interpolate and count(high) > count(low):
            guess = low + (n_tokens - count(low)) * width // (count(high) - count(low))
            middle = min(max(guess, low + 1), high - 1)
        if count(middle) <= n_tokens:
            low = middle
        else:
            high = middle
        interpolate = (high - low) * 2 <= width  # a guess that did not halve the bracket: bisect next
    if count(high) <= n_tokens:
        low = high
    return _join(lead, words[:low])


def fresh_nonce() -> str:
    """Return a random 12-hex-digit nonce: a prefix starting with it has never been cached."""
    return uuid.uuid4().hex[:12]


def shared_prefix_messages(
    prefix_tokens: int,
    nonce: str,
    question: str,
    seed: int | str,
    count_tokens: TokenCounter | None = None,
) -> list[dict[str, str]]:
    """Return a chat whose system prompt (about prefix_tokens) starts with `nonce`, then a question.

    Everything after the nonce depends only on `seed`, so a new nonce forces a prefix-cache MISS
    (every KV block differs from the first token on) and a repeated nonce gives a HIT.
    """
    system = text_of_tokens(prefix_tokens, seed, count_tokens, lead=f"{nonce}. Reference notes:")
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": question},
    ]


def conversation(
    turns: int,
    system_tokens: int,
    user_tokens: int,
    seed: int | str,
    count_tokens: TokenCounter | None = None,
) -> Iterator[list[dict[str, str]]]:
    """Yield, per turn, the messages to append before sending it: [system, user] first, then [user].

    The caller appends each assistant reply itself, so the prompt grows turn by turn and every
    turn's prompt extends the previous one (the prefix cache should hit on the history).
    """
    system = text_of_tokens(
        system_tokens,
        f"{seed}:system",
        count_tokens,
        lead="You are a careful assistant. Background notes:",
    )
    for turn in range(turns):
        user = text_of_tokens(
            user_tokens,
            f"{seed}:turn:{turn}",
            count_tokens,
            lead=f"Question {turn + 1}: summarise, in a few sentences, these notes:",
        )
        user_message = {"role": "user", "content": user}
        yield [{"role": "system", "content": system}, user_message] if turn == 0 else [user_message]


_REASONING_TEMPLATES = (
    "A train travels {a} km at {v} km/h and then {b} km at {w} km/h. Think step by step: work "
    "out the time of each leg, the total time and the average speed, explaining every step in "
    "detail before you give the final answer.",
    "A shop sells {a} items on Monday and {p} percent more on each following day. Reason step by "
    "step through every day of the week, show each calculation, check your arithmetic, and then "
    "give the weekly total.",
    "Solve for x step by step: {a}x + {b} = {c}x - {d}. Explain each algebraic step in detail, "
    "verify the solution by substituting it back, and state the answer at the end.",
    "There are {n} people at a meeting and every two of them shake hands once. Explain step by "
    "step how to count the handshakes, derive the general formula, check it on small cases, and "
    "give the final number.",
    "A rectangle has a perimeter of {p2} m and its length is {k} m more than its width. Think "
    "step by step: set up the equations, solve them, compute the area, and check the result "
    "before answering.",
    "List the prime numbers between {lo} and {hi}. For every candidate explain step by step why "
    "it is or is not prime, then give the final list and its sum.",
)


def reasoning_tasks(n: int, seed: int | str) -> list[str]:
    """Return n seeded prompts that ask for long, step-by-step answers (templates in rotation)."""
    rng = _rng(seed, "reasoning")
    tasks = []
    for index in range(n):
        template = _REASONING_TEMPLATES[index % len(_REASONING_TEMPLATES)]
        low = rng.randint(10, 200)
        numbers = {
            "a": rng.randint(12, 480),
            "b": rng.randint(12, 480),
            "c": rng.randint(2, 9),
            "d": rng.randint(1, 99),
            "v": rng.randint(40, 160),
            "w": rng.randint(40, 160),
            "p": rng.randint(5, 40),
            "n": rng.randint(6, 60),
            "p2": 2 * rng.randint(10, 200),
            "k": rng.randint(1, 9),
            "lo": low,
            "hi": low + rng.randint(20, 60),
        }
        tasks.append(template.format(**numbers))
    return tasks


ToolKind = Literal["simple", "chained", "complex"]
FAILURE_REASONS = (
    "no_tool_call",
    "bad_json",
    "unknown_function",
    "wrong_function",
    "schema_mismatch",
)
"""Why a tool call failed: none made; arguments not JSON; a function not offered; an offered
function other than the expected one; arguments that do not validate against its schema."""


@dataclass(frozen=True)
class ToolScenario:
    """A tool-calling request: offered tools, the chat so far, and the call it should produce."""

    name: str
    kind: ToolKind
    tools: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    expected_function: str


def _function(
    name: str,
    description: str,
    properties: dict[str, JsonValue],
    *,
    required: Sequence[str] = (),
    **schema: JsonValue,
) -> dict[str, JsonValue]:
    """Return an OpenAI tool entry of type function; its parameters are an `_object` schema."""
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": _object(properties, required=required, **schema),
        },
    }


def _object(
    properties: dict[str, JsonValue], *, required: Sequence[str] = (), **schema: JsonValue
) -> dict[str, JsonValue]:
    """Return a JSON Schema object: its properties, the required ones (if any), then `schema` keys.

    The key order is part of the prompt (chat templates render tools as JSON), so it stays fixed.
    """
    required_part = {"required": list(required)} if required else {}
    return {"type": "object", "properties": properties, **required_part, **schema}


def _string(description: str | None = None) -> dict[str, JsonValue]:
    """Return a JSON Schema string, with its description when given."""
    if description is None:
        return {"type": "string"}
    return {"type": "string", "description": description}


_SYSTEM = {"role": "system", "content": "You are an assistant that answers by calling tools."}

GET_WEATHER = _function(
    "get_weather",
    "Get the current weather in a city.",
    {
        "city": _string("City name, e.g. Lisbon"),
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    required=["city"],
    additionalProperties=False,
)
GET_CURRENT_TIME = _function("get_current_time", "Get the server's current date and time.", {})
SEARCH_FLIGHTS = _function(
    "search_flights",
    "Search flights between two airports on a date.",
    {
        "origin": _string("IATA code"),
        "destination": _string("IATA code"),
        "date": _string("YYYY-MM-DD"),
    },
    required=["origin", "destination", "date"],
)
BOOK_FLIGHT = _function(
    "book_flight",
    "Book a flight found by search_flights for one passenger.",
    {"flight_id": _string(), "passenger_name": _string()},
    required=["flight_id", "passenger_name"],
)
CREATE_EVENT = _function(
    "create_calendar_event",
    "Create a calendar event and invite attendees.",
    {
        "title": {"type": "string", "minLength": 1},
        "start": _string("ISO 8601 date-time"),
        "duration_minutes": {"type": "integer", "minimum": 1, "maximum": 1440},
        "attendees": {
            "type": "array",
            "minItems": 1,
            "items": _object({"name": _string(), "email": _string()}, required=["email"]),
        },
        "reminders_minutes": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    },
    required=["title", "start", "duration_minutes", "attendees"],
)
SEND_EMAIL = _function(
    "send_email",
    "Send an email.",
    {"to": _string(), "subject": _string(), "body": _string()},
    required=["to", "subject", "body"],
)

_FLIGHTS_FOUND = [
    {"flight_id": "TP1351", "departs": "2026-12-03T07:05", "price_eur": 89},
    {"flight_id": "FR7402", "departs": "2026-12-03T13:40", "price_eur": 54},
]

TOOL_SCENARIOS: dict[str, ToolScenario] = {
    scenario.name: scenario
    for scenario in (
        ToolScenario(
            name="weather",
            kind="simple",
            tools=[GET_WEATHER],
            messages=[
                _SYSTEM,
                {"role": "user", "content": "What is the weather in Lisbon now, in celsius?"},
            ],
            expected_function="get_weather",
        ),
        ToolScenario(
            name="current_time",
            kind="simple",
            tools=[GET_CURRENT_TIME],
            messages=[_SYSTEM, {"role": "user", "content": "What time is it on the server?"}],
            expected_function="get_current_time",
        ),
        ToolScenario(
            name="flight_booking",
            kind="chained",
            tools=[SEARCH_FLIGHTS, BOOK_FLIGHT],
            messages=[
                _SYSTEM,
                {
                    "role": "user",
                    "content": "Book the cheapest flight from LIS to MAD on "
                    "2026-12-03 for Ana Silva.",
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_search_1",
                            "type": "function",
                            "function": {
                                "name": "search_flights",
                                "arguments": json.dumps(
                                    {"origin": "LIS", "destination": "MAD", "date": "2026-12-03"}
                                ),
                            },
                        }
                    ],
                },
                {
                    "role": "tool",
                    "tool_call_id": "call_search_1",
                    "content": json.dumps(_FLIGHTS_FOUND),
                },
            ],
            expected_function="book_flight",
        ),
        ToolScenario(
            name="calendar_event",
            kind="complex",
            tools=[GET_WEATHER, SEND_EMAIL, CREATE_EVENT],
            messages=[
                _SYSTEM,
                {
                    "role": "user",
                    "content": "Schedule a 45 minute design review titled 'Cache "
                    "report' on 2026-12-04 at 10:00 with ana@example.com "
                    "and rui@example.com, with reminders 15 and 5 minutes "
                    "before.",
                },
            ],
            expected_function="create_calendar_event",
        ),
    )
}


def _call_parts(call: dict[str, Any]) -> tuple[str | None, Any]:
    """Return (name, arguments) of an OpenAI tool call dict, or of a flat {name, arguments} one."""
    function = call.get("function", call)
    return function.get("name"), function.get("arguments")


def _parameters_by_name(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Map each offered function's name to its parameters schema."""
    schemas = {}
    for tool in tools:
        function = tool.get("function", tool)
        schemas[function["name"]] = function.get("parameters") or {
            "type": "object",
            "properties": {},
        }
    return schemas


def _call_failure(
    name: str | None, arguments: Any, schemas: dict[str, dict[str, Any]], expected: str | None
) -> str | None:
    """Classify one call: unknown/wrong function first, then JSON, then schema."""
    if name not in schemas:
        return "unknown_function"
    if expected is not None and name != expected:
        return "wrong_function"
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return "bad_json"
    elif arguments is None:
        return "bad_json"
    schema = schemas[name]
    if not validator_for(schema)(schema).is_valid(arguments):
        return "schema_mismatch"
    return None


def classify_tool_call(
    record_tool_calls: list[dict[str, Any]] | None,
    tools: list[dict[str, Any]],
    expected_function: str | None,
) -> str | None:
    """Return why a response's tool calls fail the scenario (see FAILURE_REASONS), None if valid.

    A response passes when any call to the expected function (any offered function when
    expected_function is None) has JSON arguments that validate against its schema. Otherwise
    the reason is that of the first call to the expected function, else of the first call.
    """
    if not record_tool_calls:
        return "no_tool_call"
    schemas = _parameters_by_name(tools)
    verdicts = []
    for call in record_tool_calls:
        name, arguments = _call_parts(call)
        failure = _call_failure(name, arguments, schemas, expected_function)
        if failure is None:
            return None
        verdicts.append((name == expected_function, failure))
    expected_verdicts = [failure for is_expected, failure in verdicts if is_expected]
    return expected_verdicts[0] if expected_verdicts else verdicts[0][1]
