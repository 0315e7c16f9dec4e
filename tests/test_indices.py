"""Index rules of rrt-paper.md section 1.2, row by row."""

import pytest

from rrt.recursive.indices import depths_of_position, position_of_depth, source_layers, stepwise_sources


@pytest.mark.parametrize(
    "num_layers,loops,expected",
    [
        (18, 2, [0, 2, 4, 6, 8, 11, 13, 15, 17]),  # Gemma 2B / gemma-3-270m, B=2
        (18, 3, [0, 3, 7, 10, 14, 17]),  # Gemma 2B, B=3
        (22, 2, [0, 2, 4, 6, 8, 10, 13, 15, 17, 19, 21]),  # TinyLlama 1.1B
        (16, 2, [0, 2, 4, 6, 9, 11, 13, 15]),  # Pythia 1B
        (24, 2, [0, 2, 4, 6, 8, 10, 13, 15, 17, 19, 21, 23]),  # Pythia 410M
    ],
)
def test_stepwise_sources_match_paper_table(num_layers, loops, expected):
    assert stepwise_sources(num_layers, num_layers // loops) == expected


@pytest.mark.parametrize("num_layers,loops", [(18, 2), (18, 3), (22, 2), (16, 2), (24, 2)])
def test_average_groups_are_i_plus_multiples_of_k(num_layers, loops):
    k = num_layers // loops
    for i in range(k):
        assert source_layers("average", i, num_layers, loops, "cycle") == [i + j * k for j in range(loops)]


def test_figure2_six_layers_looped_twice():
    # Fig. 2: Stepwise {1,3,6}, Average {(1,4),(2,5),(3,6)}, Lower {1,2,3} (1-indexed).
    assert [source_layers("stepwise", i, 6, 2, "cycle") for i in range(3)] == [[0], [2], [5]]
    assert [source_layers("average", i, 6, 2, "cycle") for i in range(3)] == [[0, 3], [1, 4], [2, 5]]
    assert [source_layers("lower", i, 6, 2, "cycle") for i in range(3)] == [[0], [1], [2]]
    assert [source_layers("upper", i, 6, 2, "cycle") for i in range(3)] == [[3], [4], [5]]


def test_stepwise_is_round_half_even_not_half_up():
    # linspace(0, 5, 3) = 0, 2.5, 5: half-even gives 2 (the paper's layer 3), half-up would give 3.
    assert stepwise_sources(6, 3)[1] == 2


def test_cycle_and_sequence_orders():
    assert [position_of_depth(d, 6, 2, "cycle") for d in range(6)] == [0, 1, 2, 0, 1, 2]
    assert [position_of_depth(d, 6, 2, "sequence") for d in range(6)] == [0, 0, 1, 1, 2, 2]
    assert depths_of_position(1, 6, 2, "sequence") == [2, 3]
    assert source_layers("average", 1, 6, 2, "sequence") == [2, 3]
