"""kseg.data.stats: class pixel statistics and THE class weights, checked on numbers worked out by hand."""

import numpy as np
import pytest

from kseg.data.io import write_label
from kseg.data.stats import (
    LabelCounter,
    class_stats,
    class_weights,
    enet_weights,
    is_binary_255,
    median_frequency_weights,
    parse_class_weights,
)
from kseg.errors import ConfigError, DataError

IGN = 255

# Three 2x3 labels, 4 classes (class 3 never appears), 3 ignored pixels.
L1 = np.array([[0, 0, 1], [1, IGN, 0]])  # class 0: 3, class 1: 2, ignored 1 -> 5 class pixels
L2 = np.array([[2, 2, 2], [0, IGN, IGN]])  # class 0: 1, class 2: 3, ignored 2 -> 4 class pixels
L3 = np.array([[0, 0, 0], [0, 1, 1]])  # class 0: 4, class 1: 2 -> 6 class pixels
LABELS = [L1, L2, L3]

# By hand:
#   pixels:       c0 = 3 + 1 + 4 = 8, c1 = 2 + 2 = 4, c2 = 3, c3 = 0 (15 class pixels)
#   image pixels: c0 in L1, L2, L3 = 5 + 4 + 6 = 15; c1 in L1, L3 = 5 + 6 = 11; c2 in L2 = 4
#   freq:         8/15 = 0.5333, 4/11 = 0.3636, 3/4 = 0.75 -> median 8/15
#   weights:      (8/15)/(8/15) = 1, (8/15)/(4/11) = 22/15, (8/15)/(3/4) = 32/45, absent 0
MEDIAN_FREQUENCY = [1.0, 22 / 15, 32 / 45, 0.0]
#   ENet: p = 8/15, 4/15, 3/15; 1/ln(1.02 + p) = 1/ln(1.553333), 1/ln(1.286667), 1/ln(1.22)
ENET = [2.2706467437806386, 3.9673897257946145, 5.02889455097369, 0.0]


def test_class_stats_counts_by_hand():
    s = class_stats(LABELS, 4)
    assert s.pixels.tolist() == [8, 4, 3, 0]
    assert s.image_pixels.tolist() == [15, 11, 4, 0]
    assert s.images.tolist() == [3, 2, 1, 0]
    assert (s.n_images, s.ignored, s.other, s.total) == (3, 3, 0, 15)
    np.testing.assert_allclose(s.frequencies()[:3], [8 / 15, 4 / 11, 3 / 4])
    assert np.isnan(s.frequencies()[3])
    np.testing.assert_allclose(s.proportions(), [8 / 15, 4 / 15, 3 / 15, 0])


def test_median_frequency_weights_by_hand():
    assert median_frequency_weights(class_stats(LABELS, 4)) == pytest.approx(MEDIAN_FREQUENCY)


def test_enet_weights_by_hand():
    assert enet_weights(class_stats(LABELS, 4)) == pytest.approx(ENET)
    # the bound 1/ln(1.02) is reached only as p -> 0; p = 1 gives 1/ln(2.02)
    assert enet_weights(class_stats([np.zeros((2, 2))], 2)) == pytest.approx([1 / np.log(2.02), 0.0])


def test_files_and_arrays_give_the_same_statistics(tmp_path):
    paths = []
    for i, lab in enumerate(LABELS):
        p = str(tmp_path / f"{i}.png")
        write_label(p, lab.astype(np.uint8))
        paths.append(p)
    a, b = class_stats(LABELS, 4), class_stats(paths, 4)
    assert a.pixels.tolist() == b.pixels.tolist() and a.image_pixels.tolist() == b.image_pixels.tolist()


def test_values_that_are_not_classes_are_left_out_like_ignore():
    # with 2 classes, value 2 is neither a class nor ignored: counted in `other`, not in the totals
    s = class_stats(LABELS, 2)
    assert s.pixels.tolist() == [8, 4] and s.other == 3 and s.ignored == 3
    assert s.image_pixels.tolist() == [5 + 1 + 6, 5 + 6]


def test_sigmoid_model_counts_two_classes():
    s = class_stats([np.array([[0, 1, 1, IGN]])], 1)
    assert s.pixels.tolist() == [1, 2]
    assert class_weights("auto", s, 1) == pytest.approx([1.5, 0.75])  # freq 1/3, 2/3; median 1/2


def test_nothing_ignored_with_a_negative_ignore_index():
    s = class_stats([L1], 256, ignore_index=-1)
    assert s.pixels[IGN] == 1 and s.ignored == 0


def test_counter_keeps_every_value_and_merges():
    a, b = LabelCounter(IGN), LabelCounter(IGN)
    a.add(L1)
    b.add(L2)
    b.add(L3)
    both = a.merge(b)
    assert both.values() == {0: 8, 1: 4, 2: 3, IGN: 3}
    assert both.images_with() == {0: 3, 1: 2, 2: 1, IGN: 2}
    assert both.stats(4).pixels.tolist() == class_stats(LABELS, 4).pixels.tolist()
    with pytest.raises(DataError, match="negative"):
        a.add(np.array([[-1]]))


def test_class_weights_specs():
    stats = class_stats(LABELS, 4)
    assert class_weights(None, stats, 4) is None
    assert class_weights("auto", stats, 4) == pytest.approx(MEDIAN_FREQUENCY)
    assert class_weights("enet", lambda: stats, 4) == pytest.approx(ENET)
    assert class_weights("1, 2,0.5,3", None, 4) == [1.0, 2.0, 0.5, 3.0]
    assert class_weights([1, 2], None, 1) == [1.0, 2.0]

    def never():
        raise AssertionError("explicit weights must not read the labels")

    assert class_weights("1,1,1,1", never, 4) == [1.0] * 4
    assert parse_class_weights("AUTO", 4) == "auto" and parse_class_weights("enet", 4) == "enet"


@pytest.mark.parametrize("spec, match", [
    ("1,2,3", "'1,2,3' has 3 values but there are 4 classes"),
    ("1,x,3,4", "'1,x,3,4': expected 'auto'"),
    ("median", "'median': expected 'auto'"),
    ("1,-1,1,1", "finite, >= 0"),
    ("0,0,0,0", "not all 0"),
])
def test_bad_class_weights_are_one_line_config_errors(spec, match):
    with pytest.raises(ConfigError, match=match) as e:
        class_weights(spec, class_stats(LABELS, 4), 4)
    assert "\n" not in str(e.value)


def test_sigmoid_weights_need_two_values():
    with pytest.raises(ConfigError, match="2 classes .*sigmoid"):
        parse_class_weights("1", 1)


def test_auto_weights_without_any_class_pixel_is_a_data_error():
    with pytest.raises(DataError, match="no pixel of any class"):
        class_weights("auto", class_stats([np.full((2, 2), IGN)], 3), 3)
    with pytest.raises(ConfigError, match="statistics of 4 classes"):
        class_weights("auto", class_stats(LABELS, 4), 3)


def test_binary_255_detection():
    assert is_binary_255([0, 255], 255) and is_binary_255([255], 255)
    assert not is_binary_255([0, 1, 255], 255) and not is_binary_255([0, 255], -1) and not is_binary_255([0], 255)
