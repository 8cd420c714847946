"""Tokenizer, text encoder and digit captions (diffusion_edu.text)."""

import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

from diffusion_edu import training
from diffusion_edu.data import load_digits
from diffusion_edu.text import (TextEncoder, Tokenizer, attribute_thresholds, caption_digits,
                                digit_attributes)

PROMPTS = ["a thick, right-slanted seven", "一个粗笔画、向右倾斜的数字七", "a small one", "数字一", "an eight"]

# the words of the captions, written out here independently of the library's tables
EN_DIGITS = "zero one two three four five six seven eight nine".split()
ZH_DIGITS = "零一二三四五六七八九"
EN_BINS = {"small": ("size", 0), "large": ("size", 2), "thin": ("thickness", 0), "thick": ("thickness", 2),
           "left-slanted": ("slant", 0), "right-slanted": ("slant", 2)}
ZH_BINS = {"较小": ("size", 0), "较大": ("size", 2), "细笔画": ("thickness", 0), "粗笔画": ("thickness", 2),
           "向左倾斜": ("slant", 0), "向右倾斜": ("slant", 2)}


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_texts(PROMPTS)


@pytest.fixture(scope="module")
def digits():
    return load_digits(size=32, split="train")


def make_encoder(tok, seed=0, **kw):
    torch.manual_seed(seed)
    return TextEncoder(tok.vocab, **{"dim": 32, "depth": 2, "heads": 4, **kw}).eval()


# ---------------------------------------------------------------------------------- tokenizer

def test_split_rule():
    assert Tokenizer.split("A Thick, RIGHT-slanted 7!") == ["a", "thick", "right", "slanted", "7"]
    assert Tokenizer.split("一个粗笔画、向右倾斜的数字七。") == list("一个粗笔画向右倾斜的数字七")
    assert Tokenizer.split("a 7 七seven") == ["a", "7", "七", "seven"]  # CJK splits from letters
    assert Tokenizer.split("ＳＥＶＥＮ，七") == ["seven", "七"]  # full-width forms (NFKC)
    assert Tokenizer.split("seven 🙂 <pad>") == ["seven", "🙂", "<", "pad", ">"]  # a symbol is a token
    assert Tokenizer.split("  ,.;  ") == [] and Tokenizer.split("") == []


def test_vocabulary(tok):
    assert tok.vocab[:2] == ["<pad>", "<unk>"] and tok.pad_id == 0 and tok.unk_id == 1
    words = [w for p in PROMPTS for w in Tokenizer.split(p)]
    assert sorted(tok.vocab[2:]) == sorted(set(words))
    counts = [words.count(w) for w in tok.vocab[2:]]
    assert counts == sorted(counts, reverse=True)  # most frequent first
    assert Tokenizer(tok.vocab).vocab == tok.vocab  # rebuilt from the stored list
    assert Tokenizer(["seven"]).vocab == ["<pad>", "<unk>", "seven"]
    rare = Tokenizer.from_texts(PROMPTS, min_count=2)
    assert set(rare.vocab[2:]) == {w for w in words if words.count(w) >= 2} and "thick" not in rare.vocab


def test_ids_and_mask_against_a_lookup(tok):
    ids, mask = tok(PROMPTS, max_length=32)
    lengths = [len(Tokenizer.split(p)) for p in PROMPTS]
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids.shape == mask.shape == (len(PROMPTS), max(lengths))  # padded to the longest
    for row, prompt in enumerate(PROMPTS):
        expected = [tok.vocab.index(w) for w in Tokenizer.split(prompt)]
        assert ids[row, :lengths[row]].tolist() == expected and mask[row].sum() == lengths[row]
        assert mask[row, :lengths[row]].all() and (ids[row, lengths[row]:] == 0).all()
    one, one_mask = tok("a small one")
    assert one.shape == (1, 3) and one_mask.all()


def test_unknown_tokens_become_unk(tok):
    ids, mask = tok(["a purple seven", "紫色的七", "🙂"])
    assert ids[0].tolist() == [tok.index["a"], 1, tok.index["seven"], 0]
    assert ids[1].tolist() == [1, 1, tok.index["的"], tok.index["七"]]
    assert ids[2, 0] == 1 and mask[2].tolist() == [True, False, False, False]
    assert tok.decode(ids[0]) == "a <unk> seven"


def test_truncation_warns_and_keeps_the_first_tokens(tok):
    long_prompt = " ".join(["seven"] * 20 + ["thick"])
    with pytest.warns(UserWarning, match="truncated"):
        ids, mask = tok(["a small one", long_prompt], max_length=16)
    assert ids.shape == (2, 16) and mask[1].all() and (ids[1] == tok.index["seven"]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exactly max_length tokens: no warning
        ids, _ = tok(" ".join(["seven"] * 16), max_length=16)
    assert ids.shape == (1, 16)


def test_empty_prompt_is_a_row_of_padding(tok):
    ids, mask = tok(["", "a small one", " ,、 "])
    assert not mask[0].any() and not mask[2].any() and (ids[[0, 2]] == 0).all()
    ids, mask = tok("")
    assert ids.shape == mask.shape == (1, 1) and not mask.any()


def test_decode(tok):
    ids, _ = tok(PROMPTS)
    assert tok.decode(ids) == ["a thick right slanted seven", "一个粗笔画向右倾斜的数字七", "a small one", "数字一",
                               "an eight"]
    # a space between tokens, except between two CJK characters
    assert tok.decode(tok("a thick 数字七 seven")[0][0]) == "a thick 数字七 seven"
    assert tok.decode([]) == ""


def test_tokenizer_bad_input(tok):
    for bad in ("seven", ["a", "a"], ["a", "<pad>"], ["a", ""], [3]):
        with pytest.raises(ValueError, match="vocab"):
            Tokenizer(bad)
    for bad in (3, [], ["a", None]):
        with pytest.raises(ValueError, match="texts"):
            tok(bad)
    with pytest.raises(ValueError, match="max_length"):
        tok("a", max_length=0)
    with pytest.raises(ValueError, match="min_count"):
        Tokenizer.from_texts(PROMPTS, min_count=0)
    with pytest.raises(ValueError, match="ids"):
        tok.decode([0, len(tok)])


# ---------------------------------------------------------------------------------- encoder

def reference_encode(enc, ids):
    """The encoder written out for one unpadded prompt ``ids (L,)``: plain softmax attention."""
    D, L = enc.dim, len(ids)
    h = enc.token_embedding.weight[ids] + enc.position_embedding[:L]  # (L, D)
    for block in enc.blocks:
        x = F.layer_norm(h, (D,), block.norm1.weight, block.norm1.bias)
        q, k, v = (x @ block.qkv.weight.T + block.qkv.bias).chunk(3, dim=-1)  # (L, D) each
        d = D // block.heads
        heads = [torch.softmax(q[:, s] @ k[:, s].T / math.sqrt(d), dim=-1) @ v[:, s]
                 for s in (slice(i * d, (i + 1) * d) for i in range(block.heads))]
        h = h + torch.cat(heads, dim=-1) @ block.proj.weight.T + block.proj.bias
        h = h + block.mlp(F.layer_norm(h, (D,), block.norm2.weight, block.norm2.bias))
    return F.layer_norm(h, (D,), enc.norm.weight, enc.norm.bias)


def test_encoder_matches_the_equations(tok):
    enc = make_encoder(tok).double()
    ids, mask = tok(PROMPTS)
    with torch.no_grad():
        out = enc(ids, mask)
        for row in range(len(PROMPTS)):
            n = int(mask[row].sum())
            ref = reference_encode(enc, ids[row, :n])  # attention over the real tokens only
            assert (out[row, :n] - ref).abs().max() < 1e-10  # float64 round-off
            assert (out[row, n:] == 0).all()  # padded positions are zeros


def test_padding_invariance(tok):
    enc = make_encoder(tok)
    with torch.no_grad():
        alone, alone_mask = enc.encode("a small one")  # (1, 3, dim), no padding
        batch, batch_mask = enc.encode(PROMPTS[:3])  # padded to 13 tokens
    assert alone_mask.all() and batch_mask[2].sum() == 3
    assert (alone[0] - batch[2, :3]).abs().max() < 1e-6  # float32 round-off of a different batch shape


def test_padded_entries_have_exactly_no_effect(tok):
    enc = make_encoder(tok)
    ids, mask = tok(PROMPTS)
    other = ids.clone()
    other[~mask] = torch.randint(0, len(tok), (int((~mask).sum()),), generator=torch.Generator().manual_seed(0))
    assert not torch.equal(other, ids)
    with torch.no_grad():
        assert torch.equal(enc(ids, mask), enc(other, mask))
        changed = enc(ids, mask.logical_or(torch.arange(ids.shape[1]) == ids.shape[1] - 1))
    assert not torch.equal(changed[0], enc(ids, mask)[0])  # a real token does change the others


def test_english_and_chinese_in_one_batch(tok):
    enc = make_encoder(tok)
    with torch.no_grad():
        context, mask = enc.encode([PROMPTS[0], PROMPTS[1]])
        zh, zh_mask = enc.encode(PROMPTS[1])
    assert context.shape == (2, 13, 32) and mask.sum(1).tolist() == [5, 13]
    assert torch.isfinite(context).all() and (context[0, 5:] == 0).all()
    assert (context[1] - zh[0]).abs().max() < 1e-6
    ids, _ = tok([PROMPTS[0], PROMPTS[1]])
    assert (ids[mask] != tok.unk_id).all()  # both languages are in one vocabulary


def test_empty_prompt_and_unknowns_train_without_nan(tok):
    enc = make_encoder(tok).train()
    context, mask = enc.encode(["", "a purple 紫 seven", "a thick seven"])
    assert not mask[0].any() and (context[0] == 0).all() and torch.isfinite(context).all()
    (context ** 2).sum().backward()
    grads = [p.grad for p in enc.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g in grads[2:])  # every block's weights learn


def test_encoder_truncates_with_a_warning(tok):
    enc = make_encoder(tok, max_length=4)
    with pytest.warns(UserWarning, match="truncated"):
        context, mask = enc.encode(PROMPTS[1])
    assert context.shape == (1, 4, 32) and mask.all()


def test_save_and_load_round_trip(tok, tmp_path, monkeypatch):
    monkeypatch.setitem(training.MODEL_CLASSES, "TextEncoder", TextEncoder)
    enc = make_encoder(tok, seed=3)
    training.save_model(enc, tmp_path / "text.pt")
    loaded = training.load_model(tmp_path / "text.pt")
    assert loaded.config == enc.config and loaded.tokenizer.vocab == tok.vocab
    assert all(isinstance(w, str) for w in loaded.config["vocab"])
    with torch.no_grad():
        assert torch.equal(loaded.encode(PROMPTS)[0], enc.encode(PROMPTS)[0])


def test_encoder_bad_input(tok):
    enc = make_encoder(tok)
    ids, mask = tok(PROMPTS)
    with pytest.raises(ValueError, match="dim must be a multiple of heads"):
        TextEncoder(tok.vocab, dim=30, heads=4)
    with pytest.raises(ValueError, match="depth"):
        TextEncoder(tok.vocab, depth=-1)
    with pytest.raises(ValueError, match="vocab"):
        TextEncoder("seven")
    with pytest.raises(ValueError, match="ids"):
        enc(ids.float(), mask)
    with pytest.raises(ValueError, match="ids"):
        enc(ids[0], mask[0])
    with pytest.raises(ValueError, match=r"\[0, "):
        enc(ids + len(tok), mask)
    with pytest.raises(ValueError, match="max_length=16"):
        enc(torch.ones(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="mask"):
        enc(ids, mask.long())
    with pytest.raises(ValueError, match="mask"):
        enc(ids, mask[:, :3])


# ---------------------------------------------------------------------------------- captions

def canvas(side=32):
    return -torch.ones(1, 1, side, side)


def draw_bar(width, shear=0.0, side=32, top=4, bottom=28):
    """A bar of ``width`` pixels from row ``top`` to ``bottom``, its column shifted right by
    ``shear`` pixels per pixel of height (upwards)."""
    x = canvas(side)
    for row in range(top, bottom):
        left = round(side / 2 - width / 2 + shear * (side / 2 - row))
        x[0, 0, row, left:left + width] = 1.0
    return x


def test_slant_of_drawn_lines():
    right, left, upright = (digit_attributes(draw_bar(2, s))["slant"] for s in (0.5, -0.5, 0.0))
    assert right > 0.4 and left < -0.4 and upright == 0  # rounding to whole pixels: 0.5 +- 0.1
    assert abs(right - 0.5) < 0.1 and abs(left + 0.5) < 0.1 and torch.allclose(right, -left, atol=0.05)


def test_thickness_of_drawn_bars():
    widths = torch.tensor([1.0, 2.0, 3.0, 4.0])
    measured = torch.cat([digit_attributes(draw_bar(int(w)))["thickness"] * 32 for w in widths])
    assert (measured.diff() > 0).all()  # thicker bars measure thicker
    # for a w x l bar: w l / sqrt(l^2 + w^2) (the spread includes the bar's own width), l = 24
    expected = widths * 24 / (24**2 - 1 + widths**2 - 1).sqrt()
    assert (measured - expected).abs().max() < 1e-4
    # the same bar drawn twice as thick and twice as large at 64x64 keeps its thickness / side
    # (up to the -1 of the discrete variances)
    measured_64 = digit_attributes(draw_bar(4, side=64, top=8, bottom=56))["thickness"] * 64
    assert abs(measured_64 - 4 * 48 / math.sqrt(48**2 - 1 + 4**2 - 1)) < 1e-4
    assert abs(measured_64 / 2 - measured[1]) < 0.01


def test_size_of_squares():
    for a in (4, 8, 16):
        x = canvas()
        x[0, 0, 2:2 + a, 5:5 + a] = 1.0
        expected = math.sqrt(2 * (a**2 - 1) / 12) / 32  # Var of a uniform on a integers: (a^2 - 1) / 12
        assert abs(float(digit_attributes(x)["size"]) - expected) < 1e-6


def test_attributes_do_not_depend_on_the_resolution():
    x8, _ = load_digits(size=8, split="val")
    x32, _ = load_digits(size=32, split="val")
    a8, a32 = digit_attributes(x8), digit_attributes(x32)
    for name in a8:
        r = torch.corrcoef(torch.stack([a8[name], a32[name]]))[0, 1]
        assert r > 0.99, name  # measured 0.9995 or more on the training split


def test_blank_image_and_value_range():
    a = digit_attributes(canvas())
    assert all(float(v) == 0 for v in a.values())
    x = draw_bar(3)
    b = digit_attributes((x + 1) / 2, value_range=(0.0, 1.0))
    assert all(torch.allclose(b[n], digit_attributes(x)[n]) for n in b)


def parse(caption, lang):
    """(digit, {attribute: bin}) of a caption, from the word tables above."""
    if lang == "en":
        words = re.sub(",", "", caption).split()
        assert words[0] == ("an" if words[1][0] in "aeiou" else "a")
        return EN_DIGITS.index(words[-1]), dict(EN_BINS[w] for w in words[1:-1])
    match = re.fullmatch(r"一个(?:(.+)的)?数字(.)", caption)
    assert match, caption
    words = match.group(1).split("、") if match.group(1) else []
    return ZH_DIGITS.index(match.group(2)), dict(ZH_BINS[w] for w in words)


def test_captions_name_the_digit_and_agree_across_languages(digits):
    x, y = digits
    en, zh = caption_digits(x, y, "en"), caption_digits(x, y, "zh")
    parsed_en, parsed_zh = [parse(c, "en") for c in en], [parse(c, "zh") for c in zh]
    assert [d for d, _ in parsed_en] == y.tolist() and parsed_en == parsed_zh
    # terciles within each class: each word describes a third of the data (+-1 per class from ties)
    for name in ("size", "thickness", "slant"):
        for b in (0, 2):
            count = sum(bins.get(name) == b for _, bins in parsed_en)
            assert abs(count - len(y) / 3) <= 11, (name, b, count)


def test_caption_bins_follow_the_measurements(digits):
    x, y = digits
    attrs, thresholds = digit_attributes(x), attribute_thresholds(x, y)
    for i, caption in enumerate(caption_digits(x[:200], y[:200], thresholds=thresholds)):
        _, bins = parse(caption, "en")
        for name, value in attrs.items():
            lo, hi = thresholds[name][y[i]]
            expected = 0 if value[i] < lo else 2 if value[i] > hi else None
            assert bins.get(name) == expected
    # the lower tercile of a class lies below its upper one, and the classes differ
    for t in thresholds.values():
        assert (t[:, 0] <= t[:, 1]).all() and t[:, 0].std() > 0


def test_generator_drops_words_the_same_way_in_both_languages(digits):
    x, y = digits
    x, y = x[:300], y[:300]
    th = attribute_thresholds(*digits)
    full = [parse(c, "en")[1] for c in caption_digits(x, y, thresholds=th)]
    en = caption_digits(x, y, "en", torch.Generator().manual_seed(5), thresholds=th)
    zh = caption_digits(x, y, "zh", torch.Generator().manual_seed(5), thresholds=th)
    kept = [parse(c, "en") for c in en]
    assert kept == [parse(c, "zh") for c in zh]
    assert all(b.items() <= f.items() for (_, b), f in zip(kept, full))  # only drops words
    fraction = sum(len(b) for _, b in kept) / sum(len(f) for f in full)
    assert abs(fraction - 0.5) < 0.06  # binomial over ~600 words: std 0.02
    assert caption_digits(x[:2], y[:2], generator=torch.Generator(), p_keep=0.0, thresholds=th) == \
        [f"a{'n' if EN_DIGITS[d][0] in 'aeiou' else ''} {EN_DIGITS[d]}" for d in y[:2].tolist()]
    assert caption_digits(x[:4], y[:4], generator=torch.Generator(), p_keep=1.0, thresholds=th) == \
        caption_digits(x[:4], y[:4], thresholds=th)


def test_mixed_languages(digits):
    x, y = digits
    th = attribute_thresholds(x, y)
    mixed = caption_digits(x[:6], y[:6], "mix", thresholds=th)
    assert mixed[0::2] == caption_digits(x[:6:2], y[:6:2], "en", thresholds=th)
    assert mixed[1::2] == caption_digits(x[1:6:2], y[1:6:2], "zh", thresholds=th)
    tok = Tokenizer.from_texts(caption_digits(x, y, "en") + caption_digits(x, y, "zh"))
    assert len(tok) < 60  # a small closed language: ~20 English words and ~30 characters
    ids, mask = tok(mixed)
    assert (ids[mask] != tok.unk_id).all()


def test_caption_bad_input(digits):
    x, y = digits
    th = attribute_thresholds(x[:50], y[:50])
    for bad_images in (x[:, :, :1, :1], x.expand(-1, 3, -1, -1), x[:, 0], x.long()):
        with pytest.raises(ValueError, match="images"):
            digit_attributes(bad_images)
    with pytest.raises(ValueError, match="finite"):
        digit_attributes(torch.full((1, 1, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="value_range"):
        digit_attributes(x[:2], value_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="one entry per image"):
        caption_digits(x[:3], y[:2])
    with pytest.raises(ValueError, match="0..9"):
        caption_digits(x[:2], torch.tensor([3, 10]))
    with pytest.raises(ValueError, match="labels"):
        caption_digits(x[:2], y[:2].float())
    with pytest.raises(ValueError, match="lang"):
        caption_digits(x[:2], y[:2], "fr")
    with pytest.raises(ValueError, match="p_keep"):
        caption_digits(x[:2], y[:2], p_keep=1.5)
    with pytest.raises(ValueError, match="thresholds"):
        caption_digits(x[:2], y[:2], thresholds={"size": th["size"]})
    partial = attribute_thresholds(x[y != 3], y[y != 3])
    with pytest.raises(ValueError, match=r"digit\(s\) \[3\]"):
        caption_digits(x[y == 3][:2], y[y == 3][:2], thresholds=partial)
