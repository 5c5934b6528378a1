"""Error types: one-line messages, and they survive pickling (Ray sends worker errors to the driver)."""
import pickle

from components.errors import CheckpointError, InputError


def test_errors_round_trip_through_pickle_with_their_fields():
    err = CheckpointError("runs/x/final.pt", "checkpoint file not found", "a file written by save_checkpoint")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is CheckpointError and str(back) == str(err)
    assert (back.where, back.problem, back.expected) == ("runs/x/final.pt", "checkpoint file not found",
                                                         "a file written by save_checkpoint")
    plain = pickle.loads(pickle.dumps(InputError("k", "bad")))
    assert str(plain) == "k: bad" and plain.expected is None
