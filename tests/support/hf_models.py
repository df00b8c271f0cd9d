"""Tiny Hugging Face pipelines for the sixteen tasks, built offline: models from configs with random
weights (seeded), tokenizers trained with `tokenizers` on a few sentences. Runs in the hf environment:

    <hf env>/bin/python tests/support/hf_models.py OUT_DIR

writes OUT_DIR/<task>.zip (a zip of the pipeline's save_pretrained folder, as a user uploads it) and
OUT_DIR/<task>/ (the same folder, for the in-process reference run), then prints "ok"."""

from __future__ import annotations

import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from flightline.runtimes.plugins import HF_TASKS

tf.logging.set_verbosity_error()

SENTENCES = [
    "Flightline serves models over Arrow Flight.",
    "The cat sat on the mat and looked at the dog.",
    "A small model answers questions about a context.",
    "Translate this sentence into another language please.",
    "Summaries are shorter than the text they summarize.",
    "The weather is sunny today and the sky is blue.",
    "Where is the model served? It is served by a runtime.",
    "label 0 label 1 label 2 a photo of a cat a dog",
    "This example is good. This example is bad.",
]
TEXT_LABELS = {0: "NEGATIVE", 1: "POSITIVE"}


def wordpiece() -> tf.PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(SENTENCES, trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.decoder = decoders.WordPiece()
    return tf.BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def byte_bpe(specials: list[str], vocab: int = 300) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(SENTENCES, trainer)
    return tok


def gpt2_tokenizer() -> tf.PreTrainedTokenizerFast:
    tok = byte_bpe(["<|endoftext|>"])
    return tf.GPT2TokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def bart_tokenizer() -> tf.PreTrainedTokenizerFast:
    tok = byte_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
    return tf.BartTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )


def clip_towers(vocab_size: int, positions: int) -> dict[str, dict[str, int]]:
    """The text and vision towers of a tiny CLIP-style model (CLIP and OWL-ViT share them)."""
    layers = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = {"vocab_size": vocab_size, "max_position_embeddings": positions, **layers}
    return {
        "text_config": {**text, "eos_token_id": 2, "bos_token_id": 1, "pad_token_id": 0},
        "vision_config": {"image_size": 32, "patch_size": 8, **layers},
    }


def clip_tokenizer(max_length: int) -> tf.PreTrainedTokenizerFast:
    # Generic fast tokenizer (CLIP's own class insists on CLIP's vocabulary format): <pad> 0, <s> 1, </s> 2.
    tok = byte_bpe(["<pad>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="</s>",
        model_max_length=max_length,
        model_input_names=["input_ids", "attention_mask"],
    )


def bert_config(tokenizer: tf.PreTrainedTokenizerFast, **extra: object) -> tf.BertConfig:
    return tf.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
        **extra,
    )


def vit_config(**extra: object) -> tf.ViTConfig:
    return tf.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        **extra,
    )


def vit_processor() -> tf.ViTImageProcessor:
    return tf.ViTImageProcessor(size={"height": 32, "width": 32})


def save(folder: Path, *parts: object) -> None:
    for part in parts:
        part.save_pretrained(folder)  # type: ignore[attr-defined]


def build(task: str, folder: Path) -> None:
    if task in ("text-classification", "sentiment-analysis"):
        tok = wordpiece()
        config = bert_config(
            tok, num_labels=2, id2label=TEXT_LABELS, label2id={v: k for k, v in TEXT_LABELS.items()}
        )
        save(folder, tf.BertForSequenceClassification(config).eval(), tok)
    elif task == "zero-shot-classification":
        tok = wordpiece()
        labels = {0: "entailment", 1: "neutral", 2: "contradiction"}
        config = bert_config(tok, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})
        save(folder, tf.BertForSequenceClassification(config).eval(), tok)
    elif task == "question-answering":
        tok = wordpiece()
        save(folder, tf.BertForQuestionAnswering(bert_config(tok)).eval(), tok)
    elif task == "feature-extraction":
        tok = wordpiece()
        save(folder, tf.BertModel(bert_config(tok)).eval(), tok)
    elif task == "text-generation":
        tok = gpt2_tokenizer()
        config = tf.GPT2Config(
            vocab_size=len(tok),
            n_positions=512,
            n_embd=32,
            n_layer=2,
            n_head=2,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        model = tf.GPT2LMHeadModel(config).eval()
        model.generation_config.max_new_tokens = 8  # the pipeline samples: tests pass do_sample=False
        save(folder, model, tok)
    elif task in ("summarization", "translation"):
        tok = bart_tokenizer()
        config = tf.BartConfig(
            vocab_size=len(tok),
            d_model=32,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=37,
            decoder_ffn_dim=37,
            max_position_embeddings=128,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            decoder_start_token_id=2,
            forced_bos_token_id=0,
        )
        model = tf.BartForConditionalGeneration(config).eval()
        model.generation_config.max_length = 12
        model.generation_config.num_beams = 1
        save(folder, model, tok)
    elif task == "image-classification":
        labels = {0: "cat", 1: "dog", 2: "bird"}
        model = tf.ViTForImageClassification(
            vit_config(num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})
        )
        save(folder, model.eval(), vit_processor())
    elif task == "image-segmentation":
        labels = {0: "sky", 1: "ground", 2: "tree"}
        config = tf.SegformerConfig(
            num_encoder_blocks=2,
            depths=[1, 1],
            sr_ratios=[2, 1],
            hidden_sizes=[8, 16],
            patch_sizes=[7, 3],
            strides=[4, 2],
            num_attention_heads=[1, 2],
            mlp_ratios=[2, 2],
            decoder_hidden_size=16,
            num_labels=3,
            id2label=labels,
            label2id={v: k for k, v in labels.items()},
        )
        processor = tf.SegformerImageProcessor(size={"height": 32, "width": 32})
        save(folder, tf.SegformerForSemanticSegmentation(config).eval(), processor)
    elif task == "object-detection":
        labels = {0: "cat", 1: "dog", 2: "bird"}
        backbone = tf.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", out_features=["stage2"]
        )
        config = tf.DetrConfig(
            use_timm_backbone=False,
            backbone_config=backbone,
            backbone=None,
            use_pretrained_backbone=False,
            d_model=32,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            num_queries=6,
            num_labels=3,
            id2label=labels,
            label2id={v: k for k, v in labels.items()},
        )
        processor = tf.DetrImageProcessor(size={"shortest_edge": 32, "longest_edge": 64})
        save(folder, tf.DetrForObjectDetection(config).eval(), processor)
    elif task == "image-to-text":
        tok = gpt2_tokenizer()
        decoder = tf.GPT2Config(
            vocab_size=len(tok),
            n_positions=64,
            n_embd=32,
            n_layer=1,
            n_head=2,
            add_cross_attention=True,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        config = tf.VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit_config(), decoder)
        config.decoder_start_token_id = 0
        config.pad_token_id = 0
        config.eos_token_id = 0
        model = tf.VisionEncoderDecoderModel(config).eval()
        model.generation_config.decoder_start_token_id = 0
        model.generation_config.max_length = 10
        save(folder, model, vit_processor(), tok)
    elif task == "zero-shot-image-classification":
        tok = clip_tokenizer(64)
        config = tf.CLIPConfig(
            **clip_towers(len(tok), 64),
            projection_dim=16,
        )
        processor = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        save(folder, tf.CLIPModel(config).eval(), processor, tok)
    elif task == "zero-shot-object-detection":
        tok = clip_tokenizer(16)
        config = tf.OwlViTConfig(
            **clip_towers(len(tok), 16),
            projection_dim=32,
        )
        processor = tf.OwlViTImageProcessor(
            size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32}
        )
        save(folder, tf.OwlViTForObjectDetection(config).eval(), processor, tok)
    elif task == "automatic-speech-recognition":
        vocab = {
            "<pad>": 0,
            "<s>": 1,
            "</s>": 2,
            "<unk>": 3,
            "|": 4,
            **{c: 5 + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz'")},
        }
        (folder / "vocab.json").parent.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.json").write_text(json.dumps(vocab))
        tok = tf.Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), word_delimiter_token="|")
        extractor = tf.Wav2Vec2FeatureExtractor(
            feature_size=1,
            sampling_rate=16000,
            padding_value=0.0,
            do_normalize=True,
            return_attention_mask=False,
        )
        config = tf.Wav2Vec2Config(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=37,
            conv_dim=(16, 16),
            conv_stride=(5, 4),
            conv_kernel=(10, 8),
            num_feat_extract_layers=2,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
            pad_token_id=0,
            do_stable_layer_norm=False,
            feat_extract_norm="group",
        )
        save(folder, tf.Wav2Vec2ForCTC(config).eval(), tok, extractor)
    elif task == "whisper":  # automatic-speech-recognition by a Whisper model
        specials = [
            "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>",
        ]  # fmt: skip
        byte_bpe(specials).model.save(str(folder))  # vocab.json and merges.txt
        eos = "<|endoftext|>"
        tok = tf.WhisperTokenizer(
            str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token=eos, bos_token=eos,
            eos_token=eos, pad_token=eos,
        )  # fmt: skip
        tok.add_special_tokens({"additional_special_tokens": specials[1:]})
        ids = {token: tok.convert_tokens_to_ids(token) for token in specials}
        config = tf.WhisperConfig(
            vocab_size=len(tok), num_mel_bins=80, encoder_layers=1, decoder_layers=1,
            encoder_attention_heads=2, decoder_attention_heads=2, d_model=32, encoder_ffn_dim=37,
            decoder_ffn_dim=37, max_source_positions=1500, max_target_positions=64, pad_token_id=ids[eos],
            bos_token_id=ids[eos], eos_token_id=ids[eos], decoder_start_token_id=ids["<|startoftranscript|>"],
        )  # fmt: skip
        model = tf.WhisperForConditionalGeneration(config).eval()
        generation = model.generation_config
        generation.decoder_start_token_id = ids["<|startoftranscript|>"]
        generation.no_timestamps_token_id = ids["<|notimestamps|>"]
        generation.max_length = 12
        generation.is_multilingual = False
        generation.forced_decoder_ids = None
        generation.suppress_tokens = []
        generation.begin_suppress_tokens = []  # random weights transcribe to "": the shape is compared
        save(folder, model, tok, tf.WhisperFeatureExtractor(feature_size=80))
    elif task == "stable-diffusion-text-2-img":
        import diffusers

        tok = clip_tokenizer(77)
        text = tf.CLIPTextModel(
            tf.CLIPTextConfig(
                vocab_size=len(tok),
                hidden_size=32,
                intermediate_size=37,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=77,
                eos_token_id=2,
                bos_token_id=1,
                pad_token_id=0,
            )
        )
        unet = diffusers.UNet2DConditionModel(
            block_out_channels=(8, 16),
            layers_per_block=1,
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            norm_num_groups=4,
            attention_head_dim=4,
        )
        vae = diffusers.AutoencoderKL(
            block_out_channels=[8, 16],
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            norm_num_groups=4,
            down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2,
        )
        scheduler = diffusers.DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
        )
        pipe = diffusers.StableDiffusionPipeline(
            vae=vae,
            text_encoder=text,
            tokenizer=tok,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(folder)
    else:
        raise SystemExit(f"unknown task {task}")


TASKS = [*HF_TASKS, "whisper"]  # ASR twice: Wav2Vec2 (the task's model) and Whisper


def main() -> None:
    out = Path(sys.argv[1])
    wanted = sys.argv[2:] or TASKS
    for index, task in enumerate(wanted):
        torch.manual_seed(index)
        folder = out / task
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        build(task, folder)
        with zipfile.ZipFile(out / f"{task}.zip", "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    archive.write(path, Path(task) / path.relative_to(folder))
        for path in [out, *out.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    print("ok")


if __name__ == "__main__":
    main()
