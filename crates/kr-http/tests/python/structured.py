"""Structured outputs through the official `openai` and `ollama` Python clients, unmodified.

`client.chat.completions.parse(response_format=Model)` with pydantic models (nested objects,
enums, arrays, bounded numbers, optional fields, string and array length limits): every
schema parses, streamed and not, with max_tokens 400 — pydantic re-validates every bound, so
a length or range the grammar failed to hold fails the test. Then `json_object`, the
`structured_outputs` extension (choice, regex), Ollama `format`, and a schema the grammar
engine cannot compile (a 400).

Usage: python structured.py BASE_URL MODEL   (run by tests/python_clients.rs)
"""
import json
import re
import sys
from enum import Enum
from typing import List, Literal, Optional

import ollama
import openai
from pydantic import BaseModel, Field

BASE, MODEL = sys.argv[1], sys.argv[2]


class Person(BaseModel):
    name: str = Field(max_length=24)
    age: int = Field(ge=0, le=120)


class Color(str, Enum):
    red = "red"
    green = "green"
    blue = "blue"


class Car(BaseModel):
    brand: str = Field(max_length=20)
    color: Color
    year: int = Field(ge=1950, le=2026)


class Item(BaseModel):
    name: str = Field(max_length=16)
    quantity: int = Field(ge=1, le=10)


class Order(BaseModel):
    items: List[Item] = Field(min_length=1, max_length=3)
    express: bool


class Weather(BaseModel):
    city: str = Field(max_length=20)
    celsius: float = Field(ge=-50, le=60)
    sky: Literal["sunny", "cloudy", "rainy", "snowy"]


class Book(BaseModel):
    title: str = Field(max_length=40)
    author: str = Field(max_length=30)
    genres: List[str] = Field(max_length=3)


class Contact(BaseModel):
    name: str = Field(max_length=20)
    email: Optional[str] = Field(max_length=40)
    phone: Optional[str] = Field(max_length=16)


class Task(BaseModel):
    title: str = Field(max_length=30)
    done: bool
    priority: Literal["low", "medium", "high"]


class Company(BaseModel):
    name: str = Field(max_length=20)
    ceo: Person
    employees: int = Field(ge=1, le=100000)


class Tags(BaseModel):
    tags: List[Literal["news", "sports", "tech", "art", "food"]] = Field(min_length=1, max_length=4)


class Rectangle(BaseModel):
    width: float = Field(gt=0, le=100)
    height: float = Field(gt=0, le=100)
    label: Optional[str] = Field(max_length=10)


CASES = [
    (Person, "Describe a person called Anna who is 31."),
    (Car, "Describe a red car."),
    (Order, "Order two apples and one pear, express."),
    (Weather, "What is the weather in Paris?"),
    (Book, "Describe a famous novel."),
    (Contact, "Give me the contact of John."),
    (Task, "Create a task to buy milk."),
    (Company, "Describe a small company and its CEO."),
    (Tags, "Tag an article about football."),
    (Rectangle, "A rectangle 3 wide and 4 high."),
]


def check_openai():
    c = openai.OpenAI(base_url=BASE + "/v1", api_key="unused")
    for model, question in CASES:
        msgs = [{"role": "user", "content": question}]
        r = c.chat.completions.parse(
            model=MODEL, messages=msgs, response_format=model, max_tokens=400, temperature=0
        )
        got = r.choices[0].message.parsed
        assert isinstance(got, model), (model.__name__, r.choices[0].message.content)
        assert r.choices[0].finish_reason == "stop", (model.__name__, r.choices[0])
        with c.chat.completions.stream(
            model=MODEL, messages=msgs, response_format=model, max_tokens=400, temperature=0
        ) as s:
            final = s.get_final_completion()
        assert final.choices[0].message.parsed == got, (model.__name__, final.choices[0].message.content)
        print(f"{model.__name__}: {r.choices[0].message.content!r}")
    # json_object: whatever the prompt, the output parses when generation ends by itself.
    stopped = 0
    for q in ["Say hello.", "List three fruits.", "What is 2+2?"]:
        r = c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": q}], max_tokens=400,
            temperature=0.7, seed=1, response_format={"type": "json_object"},
        )
        ch = r.choices[0]
        if ch.finish_reason == "stop":
            assert isinstance(json.loads(ch.message.content), dict), ch.message.content
            stopped += 1
    assert stopped > 0, "no json_object generation ended by itself"
    # The extension: a choice and a regex.
    r = c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Is the sky blue?"}], max_tokens=10,
        extra_body={"structured_outputs": {"choice": ["yes", "no", "maybe"]}},
    )
    assert r.choices[0].message.content in ("yes", "no", "maybe"), r
    r = c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Give a date."}], max_tokens=20,
        extra_body={"structured_outputs": {"regex": r"20[0-9]{2}-[01][0-9]-[0-3][0-9]"}},
    )
    assert re.fullmatch(r"20[0-9]{2}-[01][0-9]-[0-3][0-9]", r.choices[0].message.content), r
    # A construct the grammar engine does not compile: a 400 naming the field and construct.
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {"type": "string"}}}}
    try:
        c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], response_format=bad
        )
        raise AssertionError("an uncompilable schema was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and "response_format" in str(e) and "not" in str(e), e


def check_ollama():
    c = ollama.Client(host=BASE)
    opts = {"temperature": 0, "num_predict": 400}
    r = c.chat(model=MODEL, messages=[{"role": "user", "content": "Describe a person."}],
               format=Person.model_json_schema(), options=opts)
    assert r.done_reason == "stop", r
    Person.model_validate_json(r.message.content)
    stopped = 0
    for prompt in ["Say hello.", "What is 2+2?", "List three colors."]:
        r = c.generate(model=MODEL, prompt=prompt, format="json", options=opts)
        if r.done_reason == "stop":
            assert isinstance(json.loads(r.response), dict), r.response
            stopped += 1
    assert stopped > 0, "no format=json generation ended by itself"


check_openai()
check_ollama()
print("ok")
