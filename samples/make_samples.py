"""Regenerate the sample files (deterministic): python samples/make_samples.py"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
rng = random.Random(20261127)

PRODUCTS = ["wireless earbuds", "standing desk", "espresso machine", "hiking boots", "e-reader",
            "air purifier", "mechanical keyboard", "rice cooker", "yoga mat", "phone case",
            "robot vacuum", "electric kettle", "office chair", "smart watch", "backpack"]
PROS = ["battery lasts all day", "setup took five minutes", "feels solid and well made",
        "quiet even at full power", "the price was fair", "shipping was fast",
        "the app is easy to use", "it looks great on my desk", "support answered within an hour"]
CONS = ["the manual is confusing", "it stopped charging after a month", "the lid feels flimsy",
        "it is louder than advertised", "the color faded quickly", "returns were a hassle",
        "it runs hot after an hour", "the strap broke in week two", "firmware updates fail"]
ISSUES = ["I was charged twice for order #{n}", "My package {n} says delivered but it is not here",
          "How do I reset my password? The link in the email expired",
          "The app crashes when I open settings on Android 15",
          "Can I change the shipping address on order #{n}?",
          "I want to cancel my subscription before the next billing date",
          "The invoice for order #{n} has the wrong company name",
          "Your API returns 500 when I upload a file larger than 10 MB"]
SENTENCES = ["The meeting moved to Thursday at 3 pm.", "Please send the signed contract by Friday.",
             "Our new office opens next month in Lisbon.", "Thanks for your quick reply yesterday.",
             "The quarterly numbers look better than expected.", "I will be out of office next week."]
LANGS = ["French", "German", "Spanish", "Japanese", "Portuguese"]
NAMES = [("Ana", "Silva"), ("Tom", "Becker"), ("Priya", "Natarajan"), ("Luis", "García"),
         ("Mei", "Tanaka"), ("Omar", "Haddad"), ("Sofia", "Rossi"), ("Jonas", "Berg"),
         ("Chloé", "Martin"), ("Kwame", "Mensah")]
COMPANIES = ["Acme Logistics", "Northwind Foods", "Blue Harbor Labs", "Quarry & Co", "Lumen Health"]


def review() -> str:
    p = rng.choice(PRODUCTS)
    pro1, pro2 = rng.sample(PROS, 2)
    return (f"I bought the {p} three weeks ago. {pro1.capitalize()}, and "
            f"{pro2}. On the other hand {rng.choice(CONS)}. "
            f"Overall I'd give it {rng.randint(2, 5)} stars.")


def native(i: int) -> dict:
    kind = i % 4
    if kind == 0:
        return {"id": f"review-{i:04d}", "prompt": f"Summarize this product review in one sentence:\n\n{review()}",
                "max_tokens": 120, "metadata": {"task": "summarize"}}
    if kind == 1:
        n = rng.randint(10000, 99999)
        ticket = rng.choice(ISSUES).format(n=n)
        return {"id": f"ticket-{i:04d}",
                "system": "You route support tickets. Answer with one word: billing, shipping, account, bug or other.",
                "messages": [{"role": "user", "content": ticket}], "max_tokens": 5, "temperature": 0,
                "metadata": {"task": "classify", "ticket": n}}
    if kind == 2:
        s = rng.choice(SENTENCES)
        lang = rng.choice(LANGS)
        return {"id": f"translate-{i:04d}", "prompt": f"Translate into {lang}: {s}", "max_tokens": 200,
                "metadata": {"task": "translate", "lang": lang}}
    return {"id": f"sentiment-{i:04d}", "prompt": f"Rate the sentiment of this review from 1 to 5 and explain briefly.\n\n{review()}",
            "schema": {"type": "object", "required": ["score", "reason"], "additionalProperties": False,
                       "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5},
                                      "reason": {"type": "string", "maxLength": 200}}},
            "max_tokens": 200, "metadata": {"task": "sentiment"}}


def contact_text(i: int) -> str:
    first, last = rng.choice(NAMES)
    company = rng.choice(COMPANIES)
    phone = f"+1 555 {rng.randint(100, 999)} {rng.randint(1000, 9999)}"
    email = f"{first.lower()}.{last.lower()}@{company.split()[0].lower()}.example"
    forms = [f"Hi, this is {first} {last} from {company}. Call me at {phone} or write to {email}.",
             f"{first} {last} ({company}) — {email}, tel. {phone}",
             f"Please loop in {first} {last}; she handles procurement at {company}. Email: {email}",
             f"Met {first} {last} at the expo. Works at {company}. Number: {phone}."]
    return rng.choice(forms)


def main() -> None:
    with (HERE / "jobs.jsonl").open("w") as f:
        for i in range(200):
            f.write(json.dumps(native(i), ensure_ascii=False) + "\n")
    with (HERE / "openai_batch.jsonl").open("w") as f:
        for i in range(200):
            body = {"model": "gpt-4o-mini", "max_tokens": 150,
                    "messages": [{"role": "system", "content": "You are a concise assistant."},
                                 {"role": "user", "content": f"Summarize this product review in one sentence:\n\n{review()}"}]}
            f.write(json.dumps({"custom_id": f"req-{i:04d}", "method": "POST",
                                "url": "/v1/chat/completions", "body": body}) + "\n")
    with (HERE / "anthropic_batch.jsonl").open("w") as f:
        for i in range(200):
            n = rng.randint(10000, 99999)
            params = {"model": "claude-haiku-4-5", "max_tokens": 150,
                      "system": "Write a short, friendly first reply to this support ticket.",
                      "messages": [{"role": "user", "content": rng.choice(ISSUES).format(n=n)}]}
            f.write(json.dumps({"custom_id": f"ticket-{i:04d}", "params": params}) + "\n")
    with (HERE / "records.jsonl").open("w") as f:
        for i in range(200):
            p = rng.choice(PRODUCTS)
            f.write(json.dumps({"id": f"sku-{1000 + i}", "product": p,
                                "specs": {"color": rng.choice(["black", "white", "sage", "navy"]),
                                          "price": rng.randint(19, 499)},
                                "audience": rng.choice(["students", "remote workers", "parents", "runners"])}) + "\n")
    with (HERE / "contacts.jsonl").open("w") as f:
        for i in range(100):
            f.write(json.dumps({"id": f"contact-{i:03d}", "text": contact_text(i)}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
