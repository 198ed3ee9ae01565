"""Text crossing a model-family boundary (``model.chain``): records re-encoded by the reader.

A generation of one family trains on, or is measured on, text another family's model wrote. The
writer's token ids mean nothing to the reader, so the reader reads the text with its own tokenizer,
as it would any text: no special tokens added (a continuation has none), cut to the longest record
a writer writes (a vocabulary that takes more tokens for the same text keeps the first ones),
and the text column becomes what the reader's ids decode to (the writer's text itself, whole,
wherever the reader's tokenizer reproduces it and nothing was cut). Every other column, the
provenance (id, source, generation, parent, writer model), is kept.

    reader_records = retokenized(writer_records, reader_tokenizer, max_tokens=64)
"""

from __future__ import annotations

import datasets

from lmcollapse.data.records import record_features


def retokenized(records: datasets.Dataset, tokenizer, max_tokens: int) -> datasets.Dataset:
    """``records`` with ``input_ids`` re-encoded from their text by ``tokenizer`` (at most
    ``max_tokens``) and ``text`` decoded from those ids. A text that encodes to nothing (it held
    only special tokens) becomes the reader's end-of-text token, so no record is empty."""
    texts = list(records["text"])
    encoded = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_tokens)["input_ids"]
    # A fast tokenizer keeps the truncation it was last called with, and saves it in tokenizer.json:
    # a model saved after this call, and one saved by a resumed run that skipped it, would differ.
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.no_truncation()
    ids = [row if row else [tokenizer.eos_token_id] for row in encoded]
    decoded = tokenizer.batch_decode(ids, skip_special_tokens=True)
    columns = {name: list(records[name]) for name in record_features() if name not in ("input_ids", "text")}
    return datasets.Dataset.from_dict({**columns, "input_ids": ids, "text": decoded}, features=record_features())
