"""Recipe validation: what users see when a recipe is wrong, and how overrides are typed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sophiavl_cli.config import Recipe, apply_overrides, load_recipe, recipe_schema
from sophiavl_cli.config.reference import render_markdown
from sophiavl_cli.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["quickstart.yaml", "fullsets.yaml"])
def test_shipped_recipes_validate(name: str) -> None:
    recipe = load_recipe(ROOT / "recipes" / name)
    assert isinstance(recipe, Recipe)


def test_fullsets_recipe_carries_the_released_values() -> None:
    r = load_recipe(ROOT / "recipes" / "fullsets.yaml")
    assert (r.data.rollout_batch_size, r.worker.rollout.n) == (16, 8)
    assert r.worker.actor.optim.lr == 6e-7 and r.algorithm.kl_coef == 0.04
    assert r.worker.actor.entropy_coef == 1e-3 and r.worker.actor.max_grad_norm == 4.0
    assert r.algorithm.trust.horizon == 12000 and r.algorithm.trust.alpha == 0.3
    assert (r.data.min_pixels, r.data.max_pixels) == (262144, 4194304)
    assert r.worker.rollout.top_p == 0.9 and r.worker.rollout.tensor_parallel_size == 2


def test_unknown_key_is_rejected_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "trainer:\n  max_stpes: 3\n")
    with pytest.raises(UserError, match=r"trainer\.max_stpes: unknown key; did you mean 'max_steps'\?"):
        load_recipe(path)


def test_unknown_section_is_rejected_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"algorithms: unknown key; did you mean 'algorithm'\?"):
        load_recipe(write(tmp_path, "algorithms:\n  kl_coef: 0.1\n"))


def test_wrong_type_names_the_yaml_path_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "worker:\n  rollout:\n    n: many\n")
    with pytest.raises(UserError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message and "worker.rollout.n" in message and "valid integer" in message


def test_overrides_are_coerced_to_the_field_types() -> None:
    recipe = load_recipe(
        ROOT / "recipes" / "quickstart.yaml",
        [
            "trainer.max_steps=2",
            "worker.rollout.n=2",
            "algorithm.trust.mode=release",
            "data.shuffle=false",
            "worker.actor.optim.lr=3e-4",
            "algorithm.trust.horizon=500",
            "trainer.logger=[jsonl]",
        ],
    )
    assert recipe.trainer.max_steps == 2 and recipe.worker.rollout.n == 2
    assert recipe.algorithm.trust.mode == "release" and recipe.data.shuffle is False
    assert recipe.worker.actor.optim.lr == pytest.approx(3e-4)
    assert recipe.algorithm.trust.horizon == 500 and recipe.trainer.logger == ["jsonl"]


def test_later_overrides_win_and_the_input_is_not_mutated() -> None:
    data = {"trainer": {"max_steps": 1}}
    out = apply_overrides(data, ["trainer.max_steps=2", "trainer.max_steps=3"])
    assert out["trainer"]["max_steps"] == 3 and data["trainer"]["max_steps"] == 1


@pytest.mark.parametrize("bad", ["trainer.max_steps", "=3", "trainer..x=1"])
def test_malformed_override_says_how_to_write_it(bad: str) -> None:
    with pytest.raises(UserError, match=r"section\.key=value"):
        load_recipe(None, [bad])


def test_override_into_a_value_is_rejected() -> None:
    with pytest.raises(UserError, match="is a value, not a section"):
        load_recipe(None, ["trainer.seed=1", "trainer.seed.x=1"])


def test_batch_sizes_that_do_not_divide_are_rejected_naming_the_keys() -> None:
    with pytest.raises(UserError, match="world size"):
        load_recipe(
            None,
            [
                "trainer.n_workers_per_node=3",
                "worker.actor.global_batch_size=4",
                "worker.rollout.n=2",
                "data.rollout_batch_size=4",
            ],
        )
    with pytest.raises(UserError, match=r"data\.rollout_batch_size .* worker\.actor\.global_batch_size"):
        load_recipe(None, ["data.rollout_batch_size=10", "worker.actor.global_batch_size=4"])


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = write(tmp_path, "trainer: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_recipe(path)


def test_missing_recipe_file_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_schema_exports_every_section_with_descriptions() -> None:
    schema = recipe_schema()
    json.dumps(schema)
    assert set(schema["properties"]) == {"data", "algorithm", "worker", "reward", "trainer"}
    trust = schema["$defs"]["TrustConfig"]["properties"]
    assert trust["mode"]["enum"] == ["paper", "release"] and trust["alpha"]["default"] == 0.3
    assert all("description" in p for p in schema["$defs"]["TrainerConfig"]["properties"].values())


def test_recipe_reference_doc_is_generated_from_the_code() -> None:
    committed = (ROOT / "docs" / "recipes.md").read_text(encoding="utf-8")
    assert committed == render_markdown(), (
        "regenerate: python -m sophiavl_cli.config.reference > docs/recipes.md"
    )


def test_a_recipe_inherits_its_base_and_overrides_keys_section_by_section(tmp_path) -> None:
    (tmp_path / "a.yaml").write_text(
        "data:\n  train_files: builtin:demo@train\ntrainer:\n  max_steps: 3\n  seed: 7\n"
        "worker:\n  actor:\n    model_path: builtin:tiny-qwen2.5-vl\n  rollout:\n    n: 2\n"
    )  # a recipe names its model and data (the base's count)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\ntrainer:\n  seed: 9\n")
    (tmp_path / "c.yaml").write_text("base: sub/b.yaml\nworker:\n  rollout:\n    temperature: 0.5\n")
    recipe = load_recipe(tmp_path / "c.yaml", ["trainer.max_steps=4"])
    assert (recipe.trainer.max_steps, recipe.trainer.seed) == (4, 9)
    assert (recipe.worker.rollout.n, recipe.worker.rollout.temperature) == (2, 0.5)


def test_missing_or_cyclic_bases_are_named(tmp_path) -> None:
    (tmp_path / "a.yaml").write_text("base: nope.yaml\n")
    with pytest.raises(UserError, match=r"a.yaml: base recipe nope.yaml not found"):
        load_recipe(tmp_path / "a.yaml")
    (tmp_path / "x.yaml").write_text("base: y.yaml\n")
    (tmp_path / "y.yaml").write_text("base: x.yaml\n")
    with pytest.raises(UserError, match="cycle"):
        load_recipe(tmp_path / "x.yaml")


def test_algorithm_keys_that_cannot_work_together_are_rejected() -> None:
    with pytest.raises(UserError, match="use_kl_loss=false"):
        load_recipe(None, ["algorithm.kl_in_reward=true"])
    with pytest.raises(UserError, match="seq-mean-token-mean"):
        load_recipe(None, ["worker.actor.policy_loss=gspo"])
    with pytest.raises(UserError, match="buffer_length"):
        load_recipe(None, ["reward.overlong.enable=true", "reward.overlong.buffer_length=4096"])
    with pytest.raises(UserError, match=r"rollout\.n >= 2"):
        load_recipe(None, ["algorithm.dynamic_sampling.enable=true", "worker.rollout.n=1"])


@pytest.mark.parametrize(
    "overrides",
    [
        ["worker.actor.policy_loss=gspo", "worker.actor.loss_agg_mode=seq-mean-token-mean"],
        ["worker.actor.policy_loss=cispo"],
        ["worker.actor.policy_loss=sapo"],
    ],
)
def test_dual_clip_is_refused_outside_ppo_clip(overrides: list[str]) -> None:
    """Neither the GSPO paper nor verl's or EasyR1's GSPO has a dual clip; CISPO and SAPO have nothing to cap."""
    assert load_recipe(None, overrides).worker.actor.clip_ratio_dual is None
    with pytest.raises(UserError, match=r"clip_ratio_dual is a ppo_clip option"):
        load_recipe(None, [*overrides, "worker.actor.clip_ratio_dual=3"])
    assert load_recipe(None, ["worker.actor.clip_ratio_dual=3"]).worker.actor.clip_ratio_dual == 3


def test_a_lower_clip_of_one_or_more_means_no_lower_bound_and_only_cispo_takes_it() -> None:
    assert (
        load_recipe(
            None, ["worker.actor.policy_loss=cispo", "worker.actor.clip_ratio_low=10"]
        ).worker.actor.clip_low
        == 10
    )
    with pytest.raises(UserError, match=r"clip_ratio_low must be below 1 with policy_loss=ppo_clip"):
        load_recipe(None, ["worker.actor.clip_ratio_low=1"])
    with pytest.raises(UserError, match=r"tau_negative"):
        load_recipe(None, ["worker.actor.policy_loss=sapo", "worker.actor.tau_negative=0"])


def test_data_prompt_key_is_gone_and_rejected_not_ignored() -> None:
    """The loader always names the question column `prompt`; a key that could not change that is refused."""
    with pytest.raises(UserError, match=r"data\.prompt_key: unknown key"):
        load_recipe(None, ["data.prompt_key=question"])


def test_optimizer_steps_per_step_is_mini_batches_times_ppo_epochs() -> None:
    recipe = load_recipe(
        None,
        [
            "data.rollout_batch_size=16",
            "worker.actor.global_batch_size=4",
            "worker.actor.ppo_epochs=2",
            "trainer.n_workers_per_node=1",
        ],
    )
    assert (recipe.updates_per_step, recipe.optimizer_steps_per_step) == (4, 8)
