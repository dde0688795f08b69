"""LLM layouts against a loopback OpenAI-compatible server: parsing, validation, retries, fallback."""
from __future__ import annotations

import json

import pytest

from gen4gen.config import LayoutConfig
from gen4gen.layout import ObjectSpec, plan_layouts
from gen4gen.models.llm_layout import LayoutValidationError, LlmLayoutPlanner, parse_reply, validate
from gen4gen.scenes import BUILTIN_SCENES

from .openai_stub import StubServer, good_layout, requested_objects

OBJECTS = [ObjectSpec("red_ball", "ball", 1.0), ObjectSpec("blue_box", "box", 0.8)]
SECRET = "sk-test-secret-0123456789"


@pytest.fixture
def script():
    """Replies served in order (the last one repeats); each is a str or a callable(body)."""
    replies: list = []

    def responder(body):
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        return reply(body) if callable(reply) else reply

    with StubServer(responder) as server:
        server.replies = replies
        yield server


def _planner(server, monkeypatch, **overrides) -> LlmLayoutPlanner:
    monkeypatch.setenv("GEN4GEN_TEST_KEY", SECRET)
    config = LayoutConfig(backend="llm", llm={"base_url": server.base_url, "model": "stub-model",
                                              "api_key_env": "GEN4GEN_TEST_KEY", "timeout_s": 5},
                          **overrides)
    return LlmLayoutPlanner(config)


def _plan(planner, index=0, canvas=1024):
    return planner.plan("blue_box+red_ball", OBJECTS, 1, 7, canvas, list(BUILTIN_SCENES), first_index=index)[0]


def test_valid_reply_becomes_a_scaled_layout_with_the_exchange_recorded(script, monkeypatch):
    script.replies.append(lambda body: good_layout(requested_objects(body)))
    layout = _plan(_planner(script, monkeypatch))
    assert layout.planner == "llm" and layout.scene == "lawn"
    assert layout.background_prompt == "a sunny lawn in a park"
    assert [o.concept for o in layout.objects] == ["red_ball", "blue_box"]
    expected = json.loads(good_layout(["red_ball", "blue_box"]))["objects"]
    for placed, asked in zip(layout.objects, expected):
        assert list(placed.box) == [round(v * 2) for v in asked["box"]]  # 512 template -> 1024 canvas
    assert [o.size_ratio for o in layout.objects] == [1.0, 0.5]
    record = layout.to_dict()["llm"]
    assert record["fallback"] is False and len(record["attempts"]) == 1
    assert record["attempts"][0]["response"] == good_layout(["red_ball", "blue_box"])
    assert record["messages"][0]["role"] == "system" and "red_ball" in record["messages"][-1]["content"]
    request = script.requests[-1]
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["model"] == "stub-model" and request["body"]["response_format"] == {"type": "json_object"}
    assert request["body"]["seed"] == layout.seed % 2**31
    # The key goes into the header only: not into the layout, its record or the client's repr.
    assert request["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert SECRET not in json.dumps(layout.to_dict()) and SECRET not in repr(_planner(script, monkeypatch).client)


@pytest.mark.parametrize("bad, error", [
    ("this is not json {", "not valid JSON"),
    (json.dumps({"scene": {"name": "lawn", "prompt": "a lawn"}, "objects": [
        {"name": "red_ball", "size_ratio": 1, "box": [10, 10, 200, 300]}]}), "expected exactly 2 objects"),
    (json.dumps({"scene": {"name": "lawn", "prompt": "a lawn"}, "objects": [
        {"name": "red_ball", "size_ratio": 1, "box": [10, 10, 200, 300]},
        {"name": "green_dog", "size_ratio": 1, "box": [210, 10, 400, 300]}]}), "unknown object name(s) green_dog"),
    (json.dumps({"scene": {"name": "lawn", "prompt": "a lawn"}, "objects": [
        {"name": "red_ball", "size_ratio": 1, "box": [10, 10, 200, 300]},
        {"name": "blue_box", "size_ratio": 1, "box": [300, 100, 700, 400]}]}), "not inside the 512x512 canvas"),
    (json.dumps({"scene": {"name": "lawn", "prompt": "a lawn"}, "objects": [
        {"name": "red_ball", "size_ratio": 1, "box": [10, 10, 200, 300]},
        {"name": "blue_box", "size_ratio": 1, "box": [300, 100, 303, 400]}]}), "degenerate"),
])
def test_invalid_reply_is_sent_back_and_retried(script, monkeypatch, bad, error):
    script.replies.extend([bad, lambda body: good_layout(requested_objects(body))])
    layout = _plan(_planner(script, monkeypatch))
    assert layout.planner == "llm"
    attempts = layout.to_dict()["llm"]["attempts"]
    assert len(attempts) == 2 and error in attempts[0]["error"] and attempts[1]["error"] is None
    assert attempts[0]["response"] == bad  # the raw reply is kept
    # The retry carried the bad reply and the validation error back to the model.
    retry = script.requests[-1]["body"]["messages"]
    assert retry[-2] == {"role": "assistant", "content": bad}
    assert error in retry[-1]["content"] and retry[-1]["role"] == "user"
    assert "valid after 2 attempts" in " ".join(layout.notes)


def test_repeated_failure_falls_back_to_the_rule_based_layout(script, monkeypatch):
    script.replies.append("not json at all")
    planner = _planner(script, monkeypatch, llm_max_attempts=3)
    layout = _plan(planner, index=2)
    rule = plan_layouts("blue_box+red_ball", OBJECTS, 1, 7, 1024, planner.config, list(BUILTIN_SCENES), first_index=2)[0]
    assert layout.planner == "rule_based"
    assert [o.box for o in layout.objects] == [o.box for o in rule.objects] and layout.seed == rule.seed
    data = layout.to_dict()
    assert data["llm"]["fallback"] is True and len(data["llm"]["attempts"]) == 3
    assert all(a["response"] == "not json at all" for a in data["llm"]["attempts"])
    assert "LLM layout failed after 3 attempt(s)" in data["notes"][0]
    assert len(script.requests) == 3


def test_http_errors_are_retried_then_fall_back(script, monkeypatch):
    script.replies.extend([(500, '{"error": "overloaded"}'), lambda body: good_layout(requested_objects(body))])
    layout = _plan(_planner(script, monkeypatch))
    attempts = layout.to_dict()["llm"]["attempts"]
    assert layout.planner == "llm" and "HTTP 500" in attempts[0]["error"] and SECRET not in attempts[0]["error"]
    # An endpoint nobody listens on: every attempt fails fast, the layout still comes back.
    config = LayoutConfig(backend="llm", llm={"base_url": "http://127.0.0.1:9/v1", "timeout_s": 2}, llm_max_attempts=2)
    layout = _plan(LlmLayoutPlanner(config))
    assert layout.planner == "rule_based" and layout.to_dict()["llm"]["fallback"] is True
    assert "cannot reach" in layout.to_dict()["llm"]["attempts"][0]["error"]


def test_parsing_is_strict_json_never_code():
    assert parse_reply('```json\n{"a": 1}\n```') == {"a": 1}  # one fence is tolerated
    for text in ['{"a": 1} trailing words', "[1, 2]", "__import__('os').system('true')", "{'a': 1}"]:
        with pytest.raises(LayoutValidationError):
            parse_reply(text)
    good = json.loads(good_layout(["red_ball", "blue_box"]))
    assert validate(good, OBJECTS, 512).scene_prompt == "a sunny lawn in a park"
    for mutate, message in [
        (lambda d: d["objects"].append(dict(d["objects"][0])), "expected exactly 2"),
        (lambda d: d["objects"][1].update(name="red_ball"), "appear once"),
        (lambda d: d["objects"][0].update(size_ratio="big"), "must be a number"),
        (lambda d: d["objects"][0].update(box=[0, 0, 10]), "list [x0, y0, x1, y1]"),
        (lambda d: d["objects"][0].update(box=[100, 50, 40, 300]), "not inside"),
        (lambda d: d.pop("scene"), '"scene" must be an object'),
    ]:
        data = json.loads(json.dumps(good))
        mutate(data)
        with pytest.raises(LayoutValidationError, match=message.replace("[", r"\[")):
            validate(data, OBJECTS, 512)


def test_small_boxes_grow_to_the_papers_minimum_and_unknown_scenes_are_kept(script, monkeypatch):
    tiny = {"scene": {"name": "a snowy mountain pass", "prompt": "a snowy mountain pass at dawn"}, "objects": [
        {"name": "red_ball", "size_ratio": 1.0, "box": [10, 400, 40, 430]},
        {"name": "blue_box", "size_ratio": 0.2, "box": [300, 300, 400, 500]}]}
    script.replies.append(json.dumps(tiny))
    layout = _plan(_planner(script, monkeypatch, size_ratio_range=(0.4, 1.0)), canvas=512)  # the paper's range
    ball = layout.objects[0].box
    assert (ball[2] - ball[0]) * (ball[3] - ball[1]) >= (512 / 5) ** 2 - 512  # grown (rounding aside)
    assert 0 <= ball[0] and ball[2] <= 512 and ball[3] <= 512
    assert layout.objects[1].size_ratio == 0.4  # clamped to the paper's range
    assert layout.scene == "a_snowy_mountain_pass" and layout.background_prompt == "a snowy mountain pass at dawn"
    assert any("not in the scene bank" in n for n in layout.notes)


def test_few_shot_examples_from_a_coco_file(script, monkeypatch, tmp_path):
    coco = {"images": [{"id": 1, "width": 640, "height": 480}, {"id": 2, "width": 100, "height": 100}],
            "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "frisbee"}],
            "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 100, 320, 380]},
                            {"image_id": 1, "category_id": 2, "bbox": [400, 50, 100, 40]},
                            {"image_id": 1, "caption": "A dog catching a frisbee in a park."},
                            {"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10]}]}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    script.replies.append(lambda body: good_layout(requested_objects(body)))
    layout = _plan(_planner(script, monkeypatch, llm_few_shot_file=str(path), llm_few_shot_examples=2))
    assert layout.planner == "llm"
    messages = script.requests[-1]["body"]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]  # image 2 has one box only
    example = json.loads(messages[2]["content"])
    assert example["scene"]["prompt"] == "A dog catching a frisbee in a park."
    assert example["objects"][0] == {"name": "dog", "size_ratio": 1.0, "box": [0, 107, 256, 512]}
