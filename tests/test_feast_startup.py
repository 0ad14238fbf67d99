"""Feast imports without typeguard's re-compilation of its classes; other typeguard users keep their checks."""

from __future__ import annotations

import subprocess  # nosec B404  # runs this interpreter on fixed snippets
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTRUMENTED = "'check_argument_types_internal' in FeatureView.__init__.__code__.co_names"


def run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,  # nosec B603  # fixed argument list
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_feast_classes_imported_through_the_package_are_not_instrumented():
    assert run(f"import recsys_retrain; from feast import FeatureView; print({INSTRUMENTED})") == "False"


def test_feast_imported_first_keeps_typeguards_instrumentation():
    # the wrapper must be in place before Feast's modules run; imported first, Feast is as shipped
    assert run(f"from feast import FeatureView; import recsys_retrain; print({INSTRUMENTED})") == "True"


def test_feast_definitions_still_build_and_a_users_own_typechecked_code_still_checks(tmp_path):
    (tmp_path / "mine.py").write_text(textwrap.dedent("""
        from typeguard import typechecked

        @typechecked
        def double(x: int) -> int:
            return 2 * x
    """))
    out = run(f"""
        import sys
        import recsys_retrain
        sys.path.insert(0, {str(tmp_path)!r})
        from datetime import timedelta
        from feast import Entity, FeatureView, Field, FileSource
        from feast.types import Int64
        from typeguard import TypeCheckError
        import mine

        user = Entity(name="user", join_keys=["user_id"])
        view = FeatureView(name="v", entities=[user], ttl=timedelta(0), schema=[Field(name="n", dtype=Int64)],
                           source=FileSource(path="x.parquet", timestamp_field="ts"))
        try:
            mine.double("2")
        except TypeCheckError:
            print(view.name, "checked")
        else:
            print(view.name, "unchecked")
    """)
    assert out == "v checked"


def test_the_wrapper_is_put_in_place_once():
    assert run("""
        import recsys_retrain
        from recsys_retrain.feast_startup import skip_feast_instrumentation
        print(skip_feast_instrumentation())
    """) == "False"
