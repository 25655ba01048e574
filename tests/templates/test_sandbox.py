"""The sandbox's limits: what they refuse, and that ordinary templates never meet them."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import jinja2
import pytest

from tenant_notify.errors import TemplateLimitError, TemplateRenderError
from tenant_notify.templates import TemplateRenderer
from tenant_notify.templates._limits import MAX_DEPTH, WORK_FACTOR
from tenant_notify.templates._sandbox import MAX_TOKENS

from .test_renderer import write


def sms(renderer: TemplateRenderer, folder: Path, source: str, **context: Any) -> str:
    write(folder, "k/sms.txt", source)
    renderer.clear_cache()
    return renderer.render_sms("k", context, templates_dir=folder)


@pytest.fixture
def small() -> TemplateRenderer:
    """A renderer with a small cap, so limits are quick to reach."""
    return TemplateRenderer(max_output_chars=10_000)


# --- captured output counts ------------------------------------------------------------


@pytest.mark.parametrize(
    "capture",
    [
        "{% macro m() %}{{ x }}{% endmacro %}{% for i in range(N) %}{% set y = m() %}{% endfor %}",
        "{% set y %}{% for i in range(N) %}{{ x }}{% endfor %}{% endset %}",
        "{% filter lower %}{% for i in range(N) %}{{ x }}{% endfor %}{% endfilter %}"
        "{{ '' if false }}",
        "{% macro w() %}{% for i in range(N) %}{{ caller() }}{% endfor %}{% endmacro %}"
        "{% set y %}{% call w() %}{{ x }}{% endcall %}{% endset %}",
    ],
    ids=["macro", "set-block", "filter-block", "call-block"],
)
def test_captured_output_counts_towards_the_work_budget(
    small: TemplateRenderer, tmp_path: Path, capture: str
) -> None:
    # Each capture stays under the output cap; all of them together do not.
    source = capture.replace("N", str(WORK_FACTOR * 10 + 1))
    with pytest.raises(TemplateLimitError, match="characters of work"):
        sms(small, tmp_path, "{% set x = 'a' * 1000 %}" + source)


def test_ordinary_use_of_macros_and_blocks_is_not_refused(
    small: TemplateRenderer, tmp_path: Path
) -> None:
    # Close to the cap, with every kind of capture used on the way.
    source = (
        "{% macro row(i) %}<{{ i }}:{{ x }}>{% endmacro %}"
        "{% set head %}{{ x|upper }}{% endset %}"
        "{% filter trim %}{{ head }}{% for i in range(47) %}{{ row(i) }}{% endfor %}{% endfilter %}"
    )
    text = sms(small, tmp_path, source, x="v" * 200)
    assert 9_000 < len(text) <= 10_000
    assert text.startswith("V" * 200 + "<0:")


# --- values -----------------------------------------------------------------------------


def test_a_value_built_from_shared_references_is_weighed_as_printed(
    small: TemplateRenderer, tmp_path: Path
) -> None:
    source = "{% set a = [x, x, x, x, x] %}{% set b = [a, a, a, a, a] %}{{ b|length }}"
    assert sms(small, tmp_path, source, x="q" * 100) == "5"  # 2,500 characters: fine
    with pytest.raises(TemplateLimitError, match="a value would produce"):
        sms(small, tmp_path, source, x="q" * 500)  # 12,500 printed, though tiny in memory


def test_values_nest_at_most_max_depth(small: TemplateRenderer, tmp_path: Path) -> None:
    source = (
        "{% set ns = namespace(x=1) %}{% for i in range(N) %}{% set ns.x = [ns.x] %}"
        "{% endfor %}{{ ns.x|length }}"
    )
    assert sms(small, tmp_path, source.replace("N", str(MAX_DEPTH - 1))) == "1"
    with pytest.raises(TemplateLimitError, match=f"nested at most {MAX_DEPTH} deep"):
        sms(small, tmp_path, source.replace("N", str(MAX_DEPTH + 1)))


def test_results_of_methods_and_filters_are_measured(
    small: TemplateRenderer, tmp_path: Path
) -> None:
    with pytest.raises(TemplateLimitError, match="a value"):
        sms(small, tmp_path, "{{ {}.fromkeys(range(2000), 'abcdefgh')|length }}")
    with pytest.raises(TemplateLimitError, match="a value"):
        sms(small, tmp_path, "{{ ('x' * 6000).encode('utf-8').hex()|length }}")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ [[1], [2, 3], [4]]|sum(start=[]) }}", "[1, 2, 3, 4]"),
        ("{{ [1, 2, 3]|sum }}", "6"),
        ("{{ items|sum(attribute='n') }}", "5"),
        ("{{ 'xxabcxx'|trim('x') }}", "abc"),
        ("{{ 'é'.encode('utf-8')|length }}", "2"),
        ("{{ total|int }}", "12"),
        ("{{ [1, [2]]|tojson(indent=2)|length }}", "22"),
        ("{{ {'a': 1}|pprint }}", "{'a': 1}"),
        ("{{ 'one two three four'|wordwrap(9) }}", "one two\nthree\nfour"),
        ("{{ 'aaa bbb\nccc ddd'|wordwrap(3, wrapstring='|') }}", "aaa|bbb|ccc|ddd"),
    ],
)
def test_guarded_filters_still_do_their_job(
    small: TemplateRenderer, tmp_path: Path, source: str, expected: str
) -> None:
    context = {"items": [{"n": 2}, {"n": 3}], "total": Decimal("12.7")}
    assert sms(small, tmp_path, source, **context) == expected


def test_wordwrap_matches_jinja(small: TemplateRenderer, tmp_path: Path) -> None:
    text = "a long line with some-hyphenated words\n\nand  a second\tparagraph " * 3
    expected = jinja2.Environment().from_string("{{ t|wordwrap(11) }}").render(t=text)
    assert sms(small, tmp_path, "{{ t|wordwrap(11) }}", t=text) == expected.strip()


# --- no state between renders -------------------------------------------------------------


def test_an_imported_template_holds_no_state_between_renders(tmp_path: Path) -> None:
    write(
        tmp_path,
        "lib.txt",
        '{% set state = namespace(last="nobody") %}{% set turn = cycler("a", "b") %}'
        "{% macro remember(x) %}{% set state.last = x %}{% endmacro %}",
    )
    write(
        tmp_path,
        "k/sms.txt",
        '{% import "lib.txt" as lib %}{% from "lib.txt" import turn %}'
        "{{ lib.state.last }} {{ turn.next() }}{{ lib.remember(who) }}",
    )
    renderer = TemplateRenderer()
    seen = [
        renderer.render_sms("k", {"who": who}, templates_dir=tmp_path)
        for who in ("ann@example.test", "bob@example.test", "cy@example.test")
    ]
    # Jinja would keep the module: "ann@example.test b", then "bob@example.test a".
    assert seen == ["nobody a", "nobody a", "nobody a"]


# --- template folders -----------------------------------------------------------------


def test_a_tenant_folder_inside_the_app_folder_is_refused(tmp_path: Path) -> None:
    app = tmp_path / "templates"
    write(app, "tenants/acme/secret/sms.txt", "acme's own")
    write(app, "tenants/globex/k/sms.txt", '{% include "app:tenants/acme/secret/sms.txt" %}')
    renderer = TemplateRenderer(app)
    for tenant in ("acme", "globex"):
        with pytest.raises(Exception, match=r"lie one inside the other|lies inside") as caught:
            renderer.render_sms("k", {}, templates_dir=app / "tenants" / tenant)
        assert type(caught.value).__name__ == "ConfigurationError"
    with pytest.raises(Exception, match="lies inside"):
        renderer.check_kind("k", "sms", templates_dir=app / "tenants" / "globex")


def test_the_app_folder_inside_a_tenant_folder_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "app/k/sms.txt", "private")
    renderer = TemplateRenderer(tmp_path / "app")
    with pytest.raises(Exception, match="lies inside"):
        renderer.render_sms("k", {}, templates_dir=tmp_path)


def test_the_same_folder_for_tenant_and_app_is_allowed(tmp_path: Path) -> None:
    write(tmp_path, "k/sms.txt", "shared")
    renderer = TemplateRenderer(tmp_path)
    assert renderer.render_sms("k", {}, templates_dir=tmp_path) == "shared"


def test_a_tenant_cannot_name_another_tenants_templates(tmp_path: Path) -> None:
    write(tmp_path, "acme/secret.txt", "acme's secret")
    write(tmp_path, "acme/k/sms.txt", '{% include "secret.txt" %}')
    renderer = TemplateRenderer()
    assert renderer.render_sms("k", {}, templates_dir=tmp_path / "acme") == "acme's secret"
    # acme's chain has key 1; its templates are "1|tenant:...". globex tries them all.
    for forged in ("1|tenant:secret.txt", "1|secret.txt", "tenant:secret.txt", "secret.txt"):
        write(tmp_path, "globex/k/sms.txt", f"{{% include {forged!r} %}}")
        renderer.clear_cache()
        with pytest.raises(TemplateRenderError, match="which no template source has"):
            renderer.render_sms("k", {}, templates_dir=tmp_path / "globex")
    write(tmp_path, "globex/k/sms.txt", '{% include "../acme/secret.txt" %}')
    renderer.clear_cache()
    with pytest.raises(TemplateRenderError, match="which no template source has"):
        renderer.render_sms("k", {}, templates_dir=tmp_path / "globex")


# --- compiling ------------------------------------------------------------------------


def test_templates_with_too_many_tokens_are_refused(
    small: TemplateRenderer, tmp_path: Path
) -> None:
    # Constants: many tokens, little code.
    assert sms(small, tmp_path, "{{ 1 }}" * (MAX_TOKENS // 3 - 1)) == "1" * (MAX_TOKENS // 3 - 1)
    with pytest.raises(TemplateLimitError, match="tokens"):
        sms(small, tmp_path, "{{ 1 }}" * (MAX_TOKENS // 3 + 1))


def test_templates_that_compile_to_too_much_code_are_refused(
    small: TemplateRenderer, tmp_path: Path
) -> None:
    macros = "".join(f"{{% macro m{i}(a, b, c, d, e, f, g) %}}{{% endmacro %}}" for i in range(150))
    with pytest.raises(TemplateLimitError, match="compiles to"):
        sms(small, tmp_path, macros)


def test_runaway_recursion_is_a_limit_error(small: TemplateRenderer, tmp_path: Path) -> None:
    with pytest.raises(TemplateLimitError, match="nested too deeply"):
        sms(small, tmp_path, "{% macro r() %}{{ r() }}{% endmacro %}{{ r() }}")
