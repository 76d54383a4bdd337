"""extract/models/clip_network.py on a full CLIPModel folder (text tower included, GELU, 64-pixel input), against
transformers' CLIPVisionModelWithProjection on the same weights."""

from pathlib import Path

import pytest
import torch

from extract.core.errors import MissingWeightsError
from extract.models.clip_network import load_clip_image_encoder


@pytest.fixture(scope="module")
def full_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4}
    vision = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 6}
    config = CLIPConfig(
        text_config=text, vision_config={**vision, "hidden_act": "gelu", "image_size": 64, "patch_size": 16}
    )
    folder = tmp_path_factory.mktemp("full-clip")
    CLIPModel(config).save_pretrained(folder)
    return folder


def test_a_full_clip_model_folder_gives_transformers_image_embeds(full_clip: Path) -> None:
    from transformers import CLIPVisionModelWithProjection

    ours = load_clip_image_encoder(full_clip / "config.json", full_clip / "model.safetensors")
    theirs = CLIPVisionModelWithProjection.from_pretrained(full_clip).eval()
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        diff = (ours(pixels) - theirs(pixel_values=pixels).image_embeds).abs().max().item()
    print(f"\nfull CLIPModel folder, GELU: max |diff| to transformers {diff:.3g}")
    assert ours.config.hidden_act == "gelu" and diff <= 1e-5


def test_a_checkpoint_missing_a_vision_key_is_one_line_naming_the_file(full_clip: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    tensors = dict(load_file(full_clip / "model.safetensors"))
    del tensors["visual_projection.weight"]
    tensors["vision_model.extra.weight"] = torch.zeros(1)
    tensors["vision_model.embeddings.position_ids"] = torch.arange(17)[None]  # older transformers saved it: ignored
    checkpoint = tmp_path / "pytorch_model.bin"
    torch.save(tensors, checkpoint)
    with pytest.raises(MissingWeightsError) as error:
        load_clip_image_encoder(full_clip / "config.json", checkpoint)
    message = str(error.value)
    assert "\n" not in message and str(checkpoint) in message
    assert "missing visual_projection.weight" in message and "unexpected vision_model.extra.weight" in message
    assert "position_ids" not in message and "text_model" not in message
