"""MR's parameter set: every trainable predictor parameter except the frequency-bias prior table."""
import numpy as np

from components.models.registry import PREDICTORS, build_predictor


def test_relation_parameters_leave_out_only_the_frequency_prior():
    for name in PREDICTORS:
        model = build_predictor(name, 6, 4, 8, freq_bias=np.zeros((7, 7, 5), np.float32), hidden_dim=16)
        mr = {n for n, _ in model.relation_parameters()}
        every = {n for n, p in model.named_parameters() if p.requires_grad}
        assert every - mr == {n for n in every if "freq_bias" in n} != set(), name
        plain = build_predictor(name, 6, 4, 8, hidden_dim=16)
        assert {n for n, _ in plain.relation_parameters()} == {n for n, _ in plain.named_parameters()}
