"""The task registry: Table 1's numbers, LAVIS's decoding mapped to new-token counts, prompts, options."""

import pytest

from hf_instructblip import InstructBlipConfig
from hf_instructblip.evaluation.tasks import CAPTION, HELD_OUT_TASKS, SHORT_ANSWER, TASKS, paper_model


def test_registry_covers_the_paper():
    assert set(HELD_OUT_TASKS) == {"nocaps", "flickr30k", "gqa", "vsr", "iconqa", "textvqa", "visdial",
                                   "hatefulmemes", "vizwiz", "scienceqa", "msvd_qa", "msrvtt_qa", "ivqa"}
    assert set(TASKS) == set(HELD_OUT_TASKS) | {"vqav2", "okvqa", "coco_caption"}
    for name in HELD_OUT_TASKS:
        assert set(TASKS[name].paper) >= {"vicuna7b", "vicuna13b", "flant5xl", "flant5xxl"}
    # Cells quoted in LAVIS issues (#390, #352, #511) and the NExT-GPT table.
    assert TASKS["scienceqa"].paper["vicuna7b"] == 60.5 and TASKS["vizwiz"].paper["vicuna7b"] == 34.5
    assert TASKS["scienceqa"].paper["flant5xl"] == 70.4 and TASKS["nocaps"].paper["vicuna7b"] == 123.1
    assert TASKS["flickr30k"].paper["vicuna7b"] == 82.4 and TASKS["gqa"].paper["blip2_flant5xl"] == 44.0
    ranked = {name for name, task in TASKS.items() if task.method == "rank"}
    assert ranked == {"scienceqa", "iconqa", "vsr", "hatefulmemes", "visdial", "msvd_qa", "msrvtt_qa"}  # paper §3
    assert {name for name, task in TASKS.items() if task.video} == {"msvd_qa", "msrvtt_qa", "ivqa"}


def test_lavis_decoding_as_new_token_counts():
    # Vicuna: LAVIS's max_length counted one placeholder token; T5: max_len was passed as max_new_tokens.
    assert SHORT_ANSWER.generate_kwargs(decoder_only=True) == dict(
        do_sample=False, num_beams=5, max_new_tokens=9, min_new_tokens=0, length_penalty=0.0, repetition_penalty=1.5)
    assert SHORT_ANSWER.generate_kwargs(decoder_only=False)["length_penalty"] == -1.0
    assert SHORT_ANSWER.generate_kwargs(decoder_only=False)["max_new_tokens"] == 10
    assert CAPTION.generate_kwargs(decoder_only=True)["min_new_tokens"] == 9


def test_paper_model_is_recognised_from_the_llm():
    assert paper_model(InstructBlipConfig.from_preset("vicuna7b")) == "vicuna7b"
    assert paper_model(InstructBlipConfig.from_preset("flant5xxl")) == "flant5xxl"


def test_options_change_the_protocol_visibly():
    row = {"question": "Which is a mammal?", "choices": ["whale", "shark"], "hint": "", "lecture": "Mammals breathe."}
    scienceqa = TASKS["scienceqa"]
    assert scienceqa.instruction(row) == (
        "Context: N/A Question: Which is a mammal? Options: (a) whale (b) shark. Answer:")
    with_lecture = scienceqa.with_options({"context_columns": "hint,lecture"})
    assert with_lecture.instruction(row).startswith("Context: Mammals breathe. Question:")
    visdial = TASKS["visdial"].with_options({"history": "rounds"})
    turns = {"caption": "a kitchen", "history": [{"question": "any people?", "answer": "no"}], "question": "q?"}
    assert visdial.instruction(turns) == "Dialog history: Q: any people? A: no\nQuestion: q? Short answer:"
    assert TASKS["gqa"].with_options({"decoding.num_beams": "1"}).decoding.num_beams == 1
    textvqa = TASKS["textvqa"].with_options({"qformer_template": "Question: {question} Short answer:"})
    ocr_row = {"question": "what does it say?", "ocr_tokens": ["stop", "sign"]}
    assert textvqa.instruction(ocr_row) == "OCR tokens: stop, sign. Question: what does it say? Short answer:"
    assert textvqa.qformer_instruction(ocr_row) == "Question: what does it say? Short answer:"
    assert TASKS["vsr"].with_options({"verbalizers": "no;yes"}).verbalizers == (("no",), ("yes",))
    with pytest.raises(ValueError, match="unknown option 'paper'"):
        TASKS["gqa"].with_options({"paper": "1"})
    with pytest.raises(ValueError, match=r"gqa.decoding.num_beams='many'"):
        TASKS["gqa"].with_options({"decoding.num_beams": "many"})


def test_verbalizer_classes_sum_their_probabilities():
    import math

    vsr = TASKS["vsr"]  # candidates in order: no, false, yes, true
    negative, positive = vsr.class_scores([math.log(0.1), math.log(0.2), math.log(0.3), math.log(0.15)])
    assert negative == pytest.approx(math.log(0.3)) and positive == pytest.approx(math.log(0.45))
