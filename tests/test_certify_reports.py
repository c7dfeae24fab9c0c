"""certify.py's attacks report (Amoeba Table 4) and ACTS protocol report (ACTS Tables 1, 2, 3, 7 with CLEVER)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)

import certify
import train
from callbacks.gathering import concatenate_rows, gather_unique_rows
from cli import RENAMED_CERTIFY_KEYS, RenamedOptionError
from reporting.acts.options import ACTSReportOptions, CleverOptions
from reporting.acts.running import ACTSProtocol

ROOT = Path(__file__).resolve().parent.parent
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
SMALL_DATA = ["--data.init_args.max_train_examples=600", "--data.init_args.max_eval_examples=120",
              "--model.init_args.eval_attack_steps=2"]
# Few examples, cheap attacks and CLEVER; certification kinds without "nonuniform", so the report certifies that
# guide for the attacked examples only and reuses the asymmetric certificates of the certification pass.
FAST_REPORTS = ["--certify.num_examples=10", "--certify.batch_size=4", "--certify.kinds=[uniform, asymmetric]",
                "--certify.attacks.num_examples=6", "--certify.attacks.pgd_linf_steps=3",
                "--certify.attacks.pgd_l2_steps=3", "--certify.attacks.cw_search_steps=2",
                "--certify.attacks.cw_max_iterations=10", "--certify.attacks.p_step=0.5",
                "--certify.acts.num_examples=9", "--certify.acts.eps=[0.05, 0.15, 0.3]",
                "--certify.acts.clever.num_batches=3", "--certify.acts.clever.batch_size=8",
                "--certify.num_figure_examples=2"]


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    log_dir = tmp_path_factory.mktemp("logs")
    cli = train.main(["--config", "normal_lenet.yaml", "--trainer.max_epochs=1",
                      f"--trainer.logger.init_args.save_dir={log_dir}", *SMALL_DATA, *QUIET])
    callback = cli.trainer.checkpoint_callback
    return Path(callback.last_model_path or callback.best_model_path)


@pytest.fixture(scope="module")
def report(trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("report")
    out = root / "report"
    summary = certify.main(["--config", "normal_lenet.yaml", f"--ckpt_path={trained_checkpoint}",
                            f"--certify.output_dir={out}", f"--trainer.logger.init_args.save_dir={root}",
                            *FAST_REPORTS, *SMALL_DATA, *QUIET])
    assert summary is not None
    return out, root, summary


def _events(root: Path) -> EventAccumulator:
    run = next((root / "normal_lenet").iterdir())
    return EventAccumulator(str(run), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE).Reload()


def test_attacks_report_is_consistent(report: tuple[Path, Path, dict]) -> None:
    out, _, summary = report
    on_disk = json.loads((out / "attacks.json").read_text())
    assert on_disk == json.loads(json.dumps(summary["attacks"]))
    keys = [attack["key"] for attack in on_disk["attacks"]]
    assert keys == ["fgsm_linf_eps0.2", "fgsm_linf_eps0.3", "pgd_linf_eps0.2", "pgd_l2_eps5", "cw_l2_kappa0"]
    certified = torch.load(out / "radii.pt")["asymmetric"]["index"]
    rows = torch.load(out / "attacks.pt")
    pixels = 28 * 28
    for attack in on_disk["attacks"]:
        assert set(attack["variants"]) == {"plain", "s", "a"}
        for variant, entry in attack["variants"].items():
            assert entry["examples"] == 6
            assert 0.0 <= entry["accuracy"] <= 1.0
            assert entry["seconds_per_example"] > 0
            example_rows = rows[f"{attack['key']}/{variant}"]
            # Each attacked example once: the first six certified examples.
            assert example_rows["index"].tolist() == certified[:6].tolist()
            assert entry["accuracy"] == pytest.approx(float(example_rows["correct"].double().mean()))
            assert entry["distances"]["l_1"]["mean"] == pytest.approx(float(example_rows["l_1"].mean()))
            if attack["key"].startswith(("fgsm", "pgd_linf")):
                eps = float(attack["setting"].split("=")[1])
                assert float(example_rows["l_inf"].max()) <= eps + 1e-6
            if attack["key"].startswith("pgd_l2"):
                assert float(example_rows["l_2"].max()) <= 5.0 + 1e-4
            if variant == "plain":
                assert bool(example_rows["p"].isnan().all())
                continue
            # Algorithm 2 masks: ceil(p n) pixels per mask; ^s has one mask, ^a a positive and a negative one.
            p = example_rows["p"]
            assert bool(((p >= 0.1 - 1e-9) & (p <= 1.0 + 1e-9)).all())
            allowed = torch.ceil(p * pixels - 1e-9) * (1 if variant == "s" else 2)
            assert bool((example_rows["l_0"] <= torch.clamp(allowed, max=pixels)).all()), (attack["key"], variant)
    table = (out / "attacks.md").read_text()
    assert "| Attack | Accuracy | l_inf | l_0 | l_2 | l_1 |" in table
    assert "C&W^a (l_2), kappa = 0" in table and "FGSM^s (l_inf), eps = 0.3" in table


def test_acts_report_is_consistent(report: tuple[Path, Path, dict]) -> None:
    out, _, summary = report
    on_disk = json.loads((out / "acts.json").read_text())
    assert on_disk["examples"] == 9
    assert 0.0 < on_disk["clean_accuracy"] <= 1.0
    assert on_disk["labels"] == "dataset" and on_disk["weights"].startswith("checkpoint ")
    assert on_disk["model"] == "lenet"
    rows = torch.load(out / "acts.pt")
    certified = torch.load(out / "radii.pt")["uniform"]["index"]
    assert rows["index"].tolist() == certified[:9].tolist()
    assert list(on_disk["attacks"]) == ["fgsm", "bim", "pgd"]  # the paper's three attacks by default
    assert on_disk["settings"]["top_k_values"] == [1, 5, 10]
    for attack, result in on_disk["attacks"].items():
        attacked, scores, top_k = rows[f"{attack}/attacked"], rows[f"{attack}/acts"], rows[f"{attack}/acts_top_k"]
        assert attacked.shape == (9, 3) and scores.shape == (9, 3) and top_k.shape == (9, 3, 3)
        assert torch.equal(top_k[:, :, 2], scores)  # acts_top_k = 10 is the last of [1, 5, 10]
        assert bool((top_k.diff(dim=2) <= 0).all())  # a minimum over more competing classes never grows
        assert bool((scores > 0).all())
        assert [level["eps"] for level in result["levels"]] == [0.05, 0.15, 0.3]
        for level, entry in enumerate(result["levels"]):
            hit = attacked[:, level]
            assert entry["attacked"] == int(hit.sum())
            assert entry["surviving_fraction"] == pytest.approx(1 - entry["attacked"] / 9)
            surviving = 1 - entry["attacked"] / 9
            assert entry["adversarial_accuracy"] == pytest.approx(on_disk["clean_accuracy"] * surviving)
            for metric in ("acts", "clever_l2", "clever_linf"):
                assert 0.0 <= entry[metric]["overlap_percent"] <= 50.0
                if 0 < entry["attacked"] < 9:
                    assert 0.0 <= entry[metric]["auroc"] <= 1.0
                else:
                    assert entry[metric]["auroc"] is None
            assert set(entry["top_k"]) == {"1", "5", "10"}
            assert entry["top_k"]["10"] == {k: entry["acts"][k] for k in ("overlap_percent", "auroc")}
        expected_flips = {
            f"N{a + 1}->N{b + 1}": int((attacked[:, a] & ~attacked[:, b]).sum()) for a, b in ((0, 1), (0, 2), (1, 2))
        }
        assert result["attack_flips"] == expected_flips
        seconds = result["seconds_per_image"]
        assert min(seconds["attack"].values()) > 0 and min(seconds["score"].values()) > 0
        assert seconds["acts"]["N2"] == pytest.approx(seconds["attack"]["N2"] + seconds["score"]["N2"])
    assert bool((rows["clever_l2"] <= 2.0 + 1e-6).all()) and bool((rows["clever_linf"] <= 0.3 + 1e-6).all())
    assert on_disk["seconds_per_image"]["clever_l2"] > 0
    table = (out / "acts.md").read_text()
    for caption in ("Table 1", "Table 2", "Table 3", "Table 5", "Table 6", "Table 7", "L_inf CLEVER", "ACTS-5"):
        assert caption in table
    for name in ("acts_histograms", "acts_noise_effectiveness"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 0
    assert summary["acts"]["attacks"]["pgd"]["levels"][0]["attacked"] == on_disk["attacks"]["pgd"]["levels"][0][
        "attacked"]


def test_reports_write_tensorboard_tags(report: tuple[Path, Path, dict]) -> None:
    _, root, _ = report
    events = _events(root)
    tags = events.Tags()
    assert {"certify/attacks/cw_l2_kappa0/a/accuracy", "certify/attacks/pgd_l2_eps5/s/l_1",
            "certify/attacks/fgsm_linf_eps0.2/plain/l_inf", "certify/acts/pgd/N1/acts/overlap_percent",
            "certify/acts/fgsm/N3/clever_linf/overlap_percent", "certify/acts/bim/N2/adversarial_accuracy",
            "certify/acts/bim/N2/acts_top5/overlap_percent", "certify/acts/pgd/attack_flips/N1_N3",
            "certify/acts/fgsm/seconds_per_image", "certify/acts/seconds_per_image/clever_l2",
            "certify/asymmetric/mean_geometric_width"} <= set(tags["scalars"])
    assert {"certify/acts/histograms", "certify/acts/noise_effectiveness"} <= set(tags["images"])
    assert "certify/acts/pgd/N2/clever_l2/not_attacked" in tags["histograms"]
    assert any(tag.startswith("certify/acts/bim/N3/acts/") for tag in tags["histograms"])
    (accuracy,) = events.Scalars("certify/attacks/pgd_linf_eps0.2/plain/accuracy")
    assert 0.0 <= accuracy.value <= 1.0


def test_reports_can_be_turned_off(trained_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    summary = certify.main(["--config", "normal_lenet.yaml", f"--ckpt_path={trained_checkpoint}",
                            f"--certify.output_dir={out}", f"--trainer.logger.init_args.save_dir={tmp_path}",
                            "--certify.attacks.enabled=false", "--certify.acts.enabled=false",
                            "--certify.num_examples=4", "--certify.kinds=[uniform]", *SMALL_DATA, *QUIET])
    assert summary is not None and "attacks" not in summary and "acts" not in summary
    assert (out / "summary.json").is_file()
    assert not (out / "attacks.json").exists() and not (out / "acts.json").exists()
    tags = _events(tmp_path).Tags()
    assert not [tag for tag in tags["scalars"] if tag.startswith(("certify/attacks", "certify/acts"))]


def test_gathered_rows_keep_each_example_once() -> None:
    parts = [{"index": torch.tensor([5, 1]), "value": torch.tensor([[5.0], [1.0]])},
             {"index": torch.tensor([3, 5]), "value": torch.tensor([[3.0], [5.0]])}, {}]
    rows = gather_unique_rows(parts, world_size=1)
    assert rows["index"].tolist() == [1, 3, 5]
    assert rows["value"].flatten().tolist() == [1.0, 3.0, 5.0]
    assert gather_unique_rows([], world_size=1) == {}
    with pytest.raises(ValueError, match="different columns"):
        concatenate_rows([{"index": torch.tensor([0])}, {"index": torch.tensor([1]), "x": torch.tensor([1])}])


def test_bad_report_options_are_rejected(trained_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises((ValueError, SystemExit)):
        certify.main(["--config", "normal_lenet.yaml", f"--ckpt_path={trained_checkpoint}",
                      "--certify.acts.eps=[0.2, 0.1]", f"--trainer.logger.init_args.save_dir={tmp_path}", *QUIET])


@pytest.mark.slow
def test_reports_under_ddp_count_each_example_once(trained_checkpoint: Path, tmp_path: Path) -> None:
    """Two gloo ranks, 7 examples (the sampler pads one duplicate): the same per-example rows as one process."""
    common = ["--config", "normal_lenet.yaml", f"--ckpt_path={trained_checkpoint}", "--certify.num_examples=7",
              "--certify.batch_size=2", "--certify.kinds=[nonuniform, asymmetric]",
              "--certify.attacks.fgsm_eps=[0.2]", "--certify.attacks.pgd_linf_steps=2",
              "--certify.attacks.pgd_l2_steps=2", "--certify.attacks.cw_search_steps=1",
              "--certify.attacks.cw_max_iterations=5", "--certify.attacks.p_step=0.9",
              "--certify.acts.clever.norms=[l2]", "--certify.acts.clever.num_batches=2",
              "--certify.acts.clever.batch_size=4", "--certify.num_figure_examples=0", *SMALL_DATA, *QUIET]
    command = [sys.executable, str(ROOT / "certify.py"), *common, "--trainer.accelerator=cpu", "--trainer.devices=2",
               "--trainer.strategy=ddp", f"--certify.output_dir={tmp_path / 'ddp'}",
               f"--trainer.logger.init_args.save_dir={tmp_path / 'ddp_logs'}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    certify.main([*common, f"--certify.output_dir={tmp_path / 'one'}",
                  f"--trainer.logger.init_args.save_dir={tmp_path / 'one_logs'}"])
    for name in ("acts.pt", "attacks.pt"):
        ddp, one = torch.load(tmp_path / "ddp" / name), torch.load(tmp_path / "one" / name)
        pairs = [(ddp, one)] if name == "acts.pt" else [(ddp[key], one[key]) for key in one]
        for two_ranks, single in pairs:
            assert two_ranks["index"].tolist() == single["index"].tolist()
            assert len(set(single["index"].tolist())) == 7
    ddp_acts, one_acts = torch.load(tmp_path / "ddp" / "acts.pt"), torch.load(tmp_path / "one" / "acts.pt")
    # PGD's start is seeded per example, so attack outcomes do not depend on the batching or the ranks.
    for attack in ("fgsm", "bim", "pgd"):
        assert torch.equal(ddp_acts[f"{attack}/attacked"], one_acts[f"{attack}/attacked"])
        assert torch.allclose(ddp_acts[f"{attack}/acts"], one_acts[f"{attack}/acts"], rtol=1e-4)
    ddp_summary = json.loads((tmp_path / "ddp" / "acts.json").read_text())
    assert ddp_summary["examples"] == 7
    assert not math.isnan(ddp_summary["attacks"]["pgd"]["levels"][0]["adversarial_accuracy"])


def _synthetic_acts_rows(protocol: ACTSProtocol, examples: int = 8) -> dict[str, torch.Tensor]:
    options = protocol.options
    generator = torch.Generator().manual_seed(0)
    rows = {"index": torch.arange(examples)}
    levels, ks = len(options.eps), len(options.top_k_values)
    for attack in options.attacks:
        rows[f"{attack}/attacked"] = torch.rand(examples, levels, generator=generator) < 0.4
        top_k = (torch.rand(examples, levels, 1, generator=generator) * 5 + 0.1).expand(-1, -1, ks).clone()
        top_k[0, 0, :] = 1000.0  # one example no class can reach
        rows[f"{attack}/acts_top_k"] = top_k
        rows[f"{attack}/acts"] = top_k[:, :, options.top_k_values.index(options.top_k)]
        rows[f"{attack}/attack_seconds"] = torch.full((examples, levels), 0.02)
        rows[f"{attack}/score_seconds"] = torch.full((examples, levels), 0.01)
    for norm in options.clever.norms:
        rows[f"clever_{norm}"] = torch.rand(examples, generator=generator)
        rows[f"clever_{norm}_seconds"] = torch.full((examples,), 3.0)
    return rows


def _markdown_table(text: str, caption: str) -> list[list[str]]:
    """The rows (cells) of the table under ``caption``, header first, the |---| rule left out."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(caption)) + 2
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if not line.startswith("|---"):
            table.append([cell.strip() for cell in line.strip("|").split("|")])
    return table


def test_acts_table_layouts_have_one_row_per_attack_and_model() -> None:
    from reporting.acts.summary import summarise_acts
    from reporting.acts.tables import acts_markdown

    options = ACTSReportOptions(eps=[0.1, 0.2, 0.3], attacks=["pgd", "fgsm", "bim"], top_k=10, top_k_values=[1, 5],
                                bins=10, clever=CleverOptions(norms=["l2", "linf"]))
    assert options.attacks == ["fgsm", "bim", "pgd"] and options.top_k_values == [1, 5, 10]
    protocol = ACTSProtocol(options)
    rows = _synthetic_acts_rows(protocol)
    summary = summarise_acts(rows, protocol, clean_accuracy=0.5,
                             metadata={"model": "resnet50", "weights": "as built", "labels": "predicted"})
    json.dumps(summary)  # serialisable
    text = acts_markdown(summary)
    assert "weights: as built" in text and "model's own predictions" in text
    levels = ["N1 (eps 0.1)", "N2 (eps 0.2)", "N3 (eps 0.3)"]
    table1 = _markdown_table(text, "Table 1")
    assert table1[0] == ["Attack", "Model", "Clean", *levels]
    assert [row[:3] for row in table1[1:]] == [["FGSM", "resnet50", "50.00%"], ["BIM", "resnet50", "50.00%"],
                                               ["PGD", "resnet50", "50.00%"]]
    fooled = int(rows["bim/attacked"][:, 1].sum())
    assert table1[2][4] == f"{100 * 0.5 * (1 - fooled / 8):.2f}% ({fooled}/8)"
    table2 = _markdown_table(text, "Table 2")
    assert table2[0] == ["Attack", "Model", *levels] and [row[0] for row in table2[1:]] == ["FGSM", "BIM", "PGD"]
    table3 = _markdown_table(text, "Table 3")
    assert table3[0] == ["Attack", "Model", "N1->N2", "N1->N3", "N2->N3"] and len(table3) == 4
    flips = summary["attacks"]["pgd"]["attack_flips"]
    assert table3[3][2:] == [str(flips[key]) for key in ("N1->N2", "N1->N3", "N2->N3")]
    table5 = _markdown_table(text, "Table 5")
    assert [row[:3] for row in table5[1:4]] == [["FGSM", "resnet50", f"ACTS-{k}"] for k in (1, 5, 10)]
    assert len(table5) == 1 + 3 * 3
    table6 = _markdown_table(text, "Table 6")
    assert [row[1] for row in table6[1:]] == ["L_2 CLEVER", "L_inf CLEVER", "ACTS (FGSM, one-step)",
                                              "ACTS (BIM, 3-step)", "ACTS (PGD, 3-step)"]
    assert table6[3][2:] == ["0.03", "0.02", "0.01", "100x"]  # 3 s of CLEVER against 0.03 s of ACTS
    table7 = _markdown_table(text, "Table 7")
    assert [row[:3] for row in table7[1:4]] == [["FGSM", "resnet50", "L_2 CLEVER"],
                                                ["FGSM", "resnet50", "L_inf CLEVER"], ["FGSM", "resnet50", "ACTS"]]
    assert len(table7) == 1 + 3 * 3
    for row in table2[1:] + table5[1:] + table7[1:]:
        for cell in row[-3:]:
            overlap = float(cell.split("%")[0])
            assert 0.0 <= overlap <= 50.0


def test_acts_scores_for_several_k_match_acts_score() -> None:
    from bounds.acts import acts_score
    from bounds.attacks import bim
    from lightning_modules.zoo import build_model
    from reporting.acts.running import acts_scores

    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28), 10).eval()
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    y = model(x).argmax(dim=1)
    result = bim(model, x, y, eps=0.1, step_size=0.05, steps=3)
    scores = acts_scores(model, x, result, [1, 5, 10])
    for column, k in enumerate((1, 5, 10)):
        torch.testing.assert_close(scores[:, column], acts_score(model, x, y, attack=result, top_k=k))


def test_acts_protocol_rejects_unknown_attacks_naming_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match="fgsm, bim, pgd"):
        ACTSReportOptions(eps=[0.1], attacks=["pgd", "cw"])
    with pytest.raises(SystemExit):
        certify.main(["--config", "normal_lenet.yaml", "--certify.acts.attacks=[fgsm, cw]", *QUIET])


@pytest.mark.parametrize(("args", "new"), [
    (["--certify.attack_cw_lr=0.1"], "certify.attacks.cw_lr"),
    (["--certify.acts_eps", "[0.1, 0.2]"], "certify.acts.eps"),
    (["--certify.clever_num_batches=3"], "certify.acts.clever.num_batches"),
    (["--certify.attacks=false"], "certify.attacks.enabled"),
    (["--certify.acts", "false"], "certify.acts.enabled"),
])
def test_former_flat_keys_on_the_command_line_name_their_new_key(args: list[str], new: str) -> None:
    with pytest.raises(RenamedOptionError, match=new.replace(".", r"\.")):
        certify.main(["--config", "normal_lenet.yaml", *args, *QUIET])


def test_the_script_reports_a_former_key_as_a_usage_error_without_a_traceback() -> None:
    done = subprocess.run([sys.executable, "certify.py", "--config", "normal_lenet.yaml", "--certify.attack_cw_lr=0.1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "certify.attacks.cw_lr" in done.stderr and "Traceback" not in done.stderr


def test_former_flat_keys_in_a_yaml_name_their_new_key(tmp_path: Path) -> None:
    config = tmp_path / "old.yaml"
    old = (ROOT / "configs" / "normal_lenet.yaml").read_text()
    config.write_text(old + "\ncertify:\n  num_examples: 5\n  attacks: false\n  acts_top_k: 5\n"
                      "  clever_paper_sizes: true\n")
    with pytest.raises(RenamedOptionError) as error:
        certify.main(["--config", str(config), *QUIET])
    message = str(error.value)
    for former, new in (("attacks", "attacks.enabled"), ("acts_top_k", "acts.top_k"),
                        ("clever_paper_sizes", "acts.clever.paper_sizes")):
        assert f"certify.{former} (certify: in {config}) is now certify.{new}" in message
    assert "num_examples" not in message  # a key that did not move is not reported


def test_every_former_flat_key_has_a_new_home() -> None:
    """Each renamed key resolves to a declared option of the nested groups."""
    from dataclasses import fields

    from reporting.options import CertifyOptions

    def declared(cls: type, prefix: str = "") -> set[str]:
        names = set()
        for item in fields(cls):
            default = item.default_factory() if callable(item.default_factory) else item.default
            nested = type(default) if hasattr(type(default), "__dataclass_fields__") else None
            names |= declared(nested, f"{prefix}{item.name}.") if nested else {f"{prefix}{item.name}"}
        return names

    assert set(RENAMED_CERTIFY_KEYS.values()) <= declared(CertifyOptions)
    kept = {item.name for item in fields(CertifyOptions)} - {"attacks", "acts"}
    assert not kept & set(RENAMED_CERTIFY_KEYS) - {"attacks", "acts"}
    assert len(kept) + len(RENAMED_CERTIFY_KEYS) == 46  # the 46 options of the former flat group, each accounted for


def test_pgd_restarts_never_fool_fewer_examples_and_stay_in_the_budget() -> None:
    from lightning_modules.zoo import build_model
    from reporting.attacks.options import AttackReportOptions
    from reporting.attacks.running import AttackReport

    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28), 10).eval()
    x = torch.rand(16, 1, 28, 28) * 2 - 1
    y = model(x).argmax(dim=1)
    fooled = {}
    for restarts in (1, 4):
        options = AttackReportOptions(pgd_linf_eps=0.05, pgd_linf_step_size=0.01, pgd_linf_steps=3,
                                      pgd_restarts=restarts)
        spec = next(s for s in AttackReport(options).specs() if s.key == "pgd_linf_eps0.05")
        assert spec.setting == ("(l_inf), eps = 0.05" if restarts == 1 else "(l_inf, 4 restarts), eps = 0.05")
        result = spec.attack(model, x, y, generator=torch.Generator().manual_seed(3))
        assert float((result.adversarial - x).abs().max()) <= 0.05 + 1e-6
        assert torch.equal(result.success, model(result.adversarial).argmax(dim=1) != y)
        fooled[restarts] = result.success
    assert bool((fooled[4] | ~fooled[1]).all())  # the first run is the attack without restarts
    with pytest.raises(ValueError, match="pgd_restarts"):
        AttackReportOptions(pgd_restarts=0)
