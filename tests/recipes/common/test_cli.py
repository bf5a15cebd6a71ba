"""dataclass_parser: one flag per field, so a benchmark's defaults can be overridden either way."""

from dataclasses import dataclass, field

from ript.recipes.common.cli import dataclass_parser


@dataclass
class _Settings:
    lr: float = 1e-5
    positive_only: bool = True
    anchor_all_states: bool = False
    states: list[int] = field(default_factory=lambda: [0, 1])


def _parse(*argv: str) -> _Settings:
    return _Settings(**vars(dataclass_parser(_Settings, "test").parse_args(list(argv))))


def test_defaults_come_from_the_dataclass():
    assert _parse() == _Settings()


def test_a_switch_can_be_turned_off_as_well_as_on():
    assert _parse("--no-positive-only").positive_only is False
    assert _parse("--anchor-all-states").anchor_all_states is True
    assert _parse("--positive-only").positive_only is True


def test_values_and_lists_are_typed_by_the_default():
    parsed = _parse("--lr", "3e-4", "--states", "4", "5")
    assert parsed.lr == 3e-4 and parsed.states == [4, 5]
