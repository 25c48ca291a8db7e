"""The ``signal_corpus`` fixture the modality contract test asks of every modality (pytest plugin
``-p signal_fixtures``, on PYTHONPATH with the throwaway modality)."""

import pytest
from data_prep.signal.demo import SignalDemoConfig, write_demo


@pytest.fixture(scope="session")
def signal_corpus(tmp_path_factory):
    return write_demo(SignalDemoConfig(out=str(tmp_path_factory.mktemp("signal") / "raw"))), {}
