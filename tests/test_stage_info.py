"""stage.json, the stage contract: what the writer writes every reader reads back; an old or a foreign
record is refused with the file's name."""

import json

import pytest

from pixart.diffusion.one_step import one_step_t_gen
from pixart.stage_info import STAGE_FILE, StageInfo, StageInfoError
from tests.helpers_models import write_stage_info


def test_a_record_reads_back_and_tells_a_one_step_stage_by_its_config(tmp_path):
    write_stage_info(tmp_path / "dmd", "dmd", model_version="7")
    write_stage_info(tmp_path / "align", "align")
    info = StageInfo.read(tmp_path / "dmd")
    assert info.model_version == "7" and info.config.kind == "dmd"
    assert one_step_t_gen(tmp_path / "dmd") == info.config.dmd.t_gen
    assert one_step_t_gen(tmp_path / "align") is None


@pytest.mark.parametrize("record, named", [
    ({"stage": "align", "model_version": "3"}, "format"),        # written before the record had a schema
    ({"format": "pixart-stage/0", "stage": "align"}, "format"),  # another version's
    ({"name": "something else"}, "format"),                      # not ours at all
])
def test_an_old_or_foreign_record_is_refused_by_name(tmp_path, record, named):
    write_stage_info(tmp_path, "align")
    good = json.loads((tmp_path / STAGE_FILE).read_text())
    (tmp_path / STAGE_FILE).write_text(json.dumps(record))
    with pytest.raises(StageInfoError, match=rf"{tmp_path / STAGE_FILE}: not a pixart-stage/1 .*{named}"):
        StageInfo.read(tmp_path)
    (tmp_path / STAGE_FILE).write_text(json.dumps({**good, "t_gen": 400}))  # a key nothing writes
    with pytest.raises(StageInfoError, match="t_gen"):
        StageInfo.read(tmp_path)


def test_a_missing_record_names_the_folder(tmp_path):
    with pytest.raises(StageInfoError, match=rf"{tmp_path / STAGE_FILE}: missing"):
        StageInfo.read(tmp_path)
