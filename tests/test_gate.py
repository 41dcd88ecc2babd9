"""The promotion gate (training/champion.py): one gate, per set and per digit, asked by publish().

The models are real ONNX graphs (tests/publish_helpers.py) that read chosen digits of the
gate's set wrong, published to a real store; the gate scores both with ONNX Runtime.
"""
import json

from publish_helpers import GATE_COUNT, gate, meta_for, tiny_onnx
from service.store import load_verified, open_store
from training.champion import compare
from training.publish import publish


def score(correct, counts):
    return {"accuracy": sum(correct) / sum(counts), "count": sum(counts), "correct": correct, "counts": counts}


def test_a_challenger_that_wins_on_average_but_loses_one_digit_is_refused(tmp_path):
    uri = str(tmp_path / "store")
    # The champion reads 20 of the 500 digits wrong, two of each digit; the challenger only
    # 10, but all of them 3s: better on average (98.0% against 96.0%), 8 of digit 3's 50 worse.
    champion = publish(tiny_onnx("champion", 0.96), meta_for(0.96), [uri], gate(), log=lambda line: None)["version"]
    threes = [i for i in range(GATE_COUNT) if i % 10 == 3][:10]
    lines = []
    challenger = publish(tiny_onnx("challenger", wrong=threes), meta_for(0.98), [uri], gate(log=lines.append),
                         log=lines.append)
    outcome = challenger["stores"][uri]
    assert not outcome["promoted"] and outcome["previous"] == champion
    assert open_store(uri).read_latest()[0]["version"] == champion
    said = [line for line in lines if line.startswith("champion: ")]
    assert len(said) == 1  # asked once, by publish()
    assert "loses digit 3 of mnist_val: 40/50 right against the champion's 48/50" in said[0]
    assert said[0].endswith(f"-> keep {champion}")

    evaluation = load_verified(open_store(uri), challenger["version"])[1]["evaluation"]
    assert evaluation["promote"] is False and evaluation["champion"] == champion
    assert evaluation["challenger_scores"] == {"mnist_val": 0.98} and evaluation["champion_scores"] == {"mnist_val": 0.96}
    assert evaluation["stopped_by"] == {"set": "mnist_val", "digit": 3, "count": 50, "challenger": 40, "champion": 48}
    digits = evaluation["per_digit"]["mnist_val"]
    assert digits["count"] == [50] * 10
    assert digits["challenger"] == [50, 50, 50, 40, 50, 50, 50, 50, 50, 50]
    assert digits["champion"] == [48] * 10
    json.dumps(evaluation)  # model.json holds it as JSON


def test_the_digit_margin_needs_more_than_one_sample_and_more_than_the_margin():
    counts = [15] * 10
    champion = score([15] * 10, counts)
    one = score([14] + [15] * 9, counts)  # one of 15: 6.7 points, yet a single sample
    promote, reason, stopped = compare({"real": one}, {"real": champion}, margin=1.0)
    assert promote and stopped is None
    two = score([13] + [15] * 9, counts)  # two of 15: 13.3 points
    promote, reason, stopped = compare({"real": two}, {"real": champion}, margin=1.0)
    assert not promote and stopped["digit"] == 0 and "loses digit 0 of real: 13/15" in reason

    big = [100] * 10
    within = score([95] + [100] * 9, big)  # five of 100: at the margin, not past it
    assert compare({"mnist_val": within}, {"mnist_val": score([100] * 10, big)}, margin=1.0)[0]
    past = score([94] + [100] * 9, big)
    assert not compare({"mnist_val": past}, {"mnist_val": score([100] * 10, big)}, margin=1.0)[0]


def test_every_set_is_judged_on_its_own():
    counts = [100] * 10
    same = score([99] * 10, counts)
    worse_real = score([96] * 10, [100] * 10)  # 3 points down on average, no digit past 5 points
    promote, reason, stopped = compare({"mnist_val": same, "real": worse_real}, {"mnist_val": same, "real": same})
    assert not promote and stopped == {"set": "real", "digit": None, "challenger": 0.96, "champion": 0.99}
    assert "challenger is worse on real by more than the margin" in reason
    # A set the champion was not scored on (it came later) cannot stop the challenger.
    assert compare({"mnist_val": same, "pen_val": worse_real}, {"mnist_val": same})[0]
