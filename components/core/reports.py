"""A stage's JSON report as a typed model: the one way reports are read and written.

The stage that owns a report writes it through its model; every other stage reads it through the same model, so a
file that does not fit is refused in one line naming it, before anything is done with it. Written atomically, in
the fields' order, indented, an undefined metric (NaN) as null: the shape DVC and users read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from components.core.atomic import write_json
from components.core.errors import DataError

if TYPE_CHECKING:
    from typing import Self  # Python 3.11; only annotations name it

__all__ = ["Report"]


class Report(BaseModel):
    """Subclasses declare the report's fields; `rerun` says what writes the file again."""

    model_config = ConfigDict(extra="forbid")  # a key the stage does not write: not its report

    rerun: ClassVar[str] = ""  # e.g. "run `msa compress`", added to every refusal
    _unwritten: ClassVar[frozenset[str]] = frozenset()  # fields the file does not name (their keys sit at the top)

    @classmethod
    def read(cls, path: str | Path) -> Self:
        """The report at `path`; a DataError naming it when it is missing, not JSON, or not of this shape."""
        fix = f"; {cls.rerun}" if cls.rerun else ""
        try:
            return cls.model_validate(json.loads(Path(path).read_text()))
        except OSError as e:
            raise DataError(path, f"missing or unreadable ({type(e).__name__}){fix}") from None
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(part) for part in first["loc"] if part not in cls._unwritten) or "file"
            raise DataError(path, f"does not fit {cls.__name__}: {where}: {first['msg']}{fix}") from None
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise DataError(path, f"not JSON ({type(e).__name__}){fix}") from None

    def write(self, path: str | Path) -> Path:
        return write_json(path, self.model_dump(mode="json"), nan_as_null=True)
