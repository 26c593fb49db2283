"""A small word-level tokenizer built offline, for demo-scale text encoders.

Real runs load the model's own tokenizer from ``<pretrained>/tokenizer``. Tiny
random text encoders used by the demo and the tests have no tokenizer to load,
so this builds one from a fixed English vocabulary, deterministically and
without touching the network. Words outside the vocabulary map to ``<unk>``.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]

# Words that describe people, faces, clothing, scenes and camera motion: enough
# to give demo captions distinct token sequences.
VOCABULARY = """
a an the and with of in on at to from by for is are his her their its this that
person man woman boy girl child people face head hair eyes mouth smile smiling looks looking
camera slowly quickly pans pan zooms zoom rotates rotating tilts moves moving close closer
up down left right in out toward away slightly gently steadily view shot portrait video
short long curly straight dark light brown black blond red gray white blue green
wearing shirt jacket suit helmet glasses hat dress sweater coat uniform
standing sitting walking talking speaking laughing turning nodding
indoors outdoors room office street park background studio stage garden
bright dim soft warm cold natural sunlight lamp evening morning
young old adult front side profile center centre frame scene clip film
happy calm serious friendly thoughtful
""".split()


def build_demo_tokenizer(model_max_length: int = 226) -> PreTrainedTokenizerFast:
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for word in VOCABULARY:
        vocab.setdefault(word, len(vocab))
    for punctuation in [",", ".", "!", "?", "'"]:
        vocab.setdefault(punctuation, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    # T5-style: every sequence ends with </s>.
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )
