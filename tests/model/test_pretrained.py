"""The packaged pretrained weights are real: a photo is recognised, a paraphrase is close."""

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mmdemo.imaging import decode_image
from mmdemo.model.encoders import EfficientNetLite0, MiniLMEncoder, load_tokenizer

# ImageNet classes 281-285 are the domestic cats (tabby, tiger, Persian, Siamese, Egyptian)
CATS = set(range(281, 286))
ESPRESSO = 967


def _pixels(path):
    image = decode_image(path).resize((224, 224), Image.BILINEAR)
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1) / 255
    return ((x - 0.5) / 0.5)[None]


def test_efficientnet_lite0_recognises_photos(fixture_path):
    model = EfficientNetLite0(output_stride=32, imagenet_head=True)
    model.load_pretrained()  # strict: every key of the packaged state dict, none missing
    model.eval()
    with torch.no_grad():
        cat = model.imagenet_logits(_pixels(fixture_path("chelsea.jpg"))).softmax(-1)[0]
        coffee = model.imagenet_logits(_pixels(fixture_path("coffee.jpg"))).softmax(-1)[0]
    assert int(cat.argmax()) in CATS and float(cat[list(CATS)].sum()) > 0.5
    assert int(coffee.argmax()) == ESPRESSO


def test_stride_16_cut_gives_a_14x14_grid():
    model = EfficientNetLite0(output_stride=16)
    model.load_pretrained()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 112, 14, 14)


def test_minilm_ranks_a_paraphrase_above_an_unrelated_sentence():
    encoder = MiniLMEncoder("minilm").eval()
    tokenizer = load_tokenizer("minilm")
    sentences = ["A cat is sleeping on the sofa.", "The kitten naps on the couch.", "Stock markets fell sharply today."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = encoder(batch["input_ids"], batch["attention_mask"])  # (3, T, 384)
    mask = batch["attention_mask"][..., None].float()
    embeddings = F.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)
    paraphrase, unrelated = float(embeddings[0] @ embeddings[1]), float(embeddings[0] @ embeddings[2])
    assert paraphrase > 0.5 > unrelated
