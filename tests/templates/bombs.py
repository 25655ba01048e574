"""Template bombs: tenant templates written as an attacker would, to take time or memory.

Each entry is a tenant template folder (relative path -> source) whose kind
``bomb`` must end ``failed`` with ``TemplateLimitError``. ``bomb/body.txt`` is
the part that goes off unless a bomb names ``bomb/body.html`` (autoescaped).
The corpus is run by ``tests/templates/bomb_runner.py`` (eager, in-process) and
``tests/integration/test_template_bombs_celery.py`` (a real worker).
"""

from __future__ import annotations

# A 200,000-character string, most of the default cap, made in the template.
BIG = '{% set big = "x" * 200000 %}'
# A 1,000-character string, and a list holding it ten times (shared references).
SMALL = '{% set s = "y" * 1000 %}{% set ten = [s, s, s, s, s, s, s, s, s, s] %}'
# ten -> 100 -> ... -> 100,000 references to one string: 100 MB when printed.
DAG = SMALL + (
    "{% set a = [ten, ten, ten, ten, ten, ten, ten, ten, ten, ten] %}"
    "{% set b = [a, a, a, a, a, a, a, a, a, a] %}"
    "{% set c = [b, b, b, b, b, b, b, b, b, b] %}"
    "{% set d = [c, c, c, c, c, c, c, c, c, c] %}"
)
# Doubling through a namespace: 2 ** 40 references after 40 turns.
DOUBLING = (
    '{% set ns = namespace(x=["z" * 100]) %}'
    "{% for i in range(40) %}{% set ns.x = [ns.x, ns.x] %}{% endfor %}"
)


def _txt(body: str, **files: str) -> dict[str, str]:
    return {"bomb/subject.txt": "s", "bomb/body.txt": body, **files}


def _html(body: str, **files: str) -> dict[str, str]:
    return {"bomb/subject.txt": "s", "bomb/body.txt": "t", "bomb/body.html": body, **files}


BOMBS: dict[str, dict[str, str]] = {
    # --- output assembled inside the template (captured, not emitted) ---
    "macro_capture": _txt(
        BIG + "{% macro m() %}{% for i in range(100000) %}{{ big }}{% endfor %}{% endmacro %}"
        "{{ m()|length }}"
    ),
    "call_block": _txt(
        BIG + "{% macro wrap() %}{% for i in range(100000) %}{{ caller() }}{% endfor %}"
        "{% endmacro %}{% call wrap() %}{{ big }}{% endcall %}"
    ),
    "set_block": _txt(
        BIG + "{% set s %}{% for i in range(100000) %}{{ big }}{% endfor %}{% endset %}"
        "{{ s|length }}"
    ),
    "filter_block": _txt(
        BIG + "{% filter upper %}{% for i in range(100000) %}{{ big }}{% endfor %}{% endfilter %}"
    ),
    "filter_block_html": _html(
        BIG + "{% filter e %}{% for i in range(100000) %}{{ big }}{% endfor %}{% endfilter %}"
    ),
    "self_block_loop": _txt(
        BIG + "{% block b %}{{ big }}{% endblock %}"
        "{% for i in range(100000) %}{% set x = [self.b()] %}{% endfor %}"
    ),
    "self_block_concat": _txt(
        BIG + "{% block b %}{% for i in range(100000) %}{{ big }}{% endfor %}{% endblock %}"
        "{{ self.b()|length }}"
    ),
    "super_block": _txt(
        "{% extends 'bomb/base.txt' %}{% block b %}{% for i in range(100000) %}"
        "{{ super() }}{% endfor %}{% endblock %}",
        **{"bomb/base.txt": BIG + "{% block b %}{{ big }}{% endblock %}"},
    ),
    "imported_body": _txt(
        "{% import 'bomb/lib.txt' as lib %}{{ lib|string|length }}",
        **{"bomb/lib.txt": BIG + "{% for i in range(100000) %}{{ big }}{% endfor %}"},
    ),
    "imported_module_printed": _txt(
        "{% import 'bomb/lib.txt' as lib %}{% set x %}{% for i in range(100000) %}{{ lib }}"
        "{% endfor %}{% endset %}",
        **{"bomb/lib.txt": BIG + "{{ big }}"},
    ),
    "include_in_capture": _txt(
        "{% set x %}{% for i in range(100000) %}{% include 'bomb/part.txt' %}{% endfor %}"
        "{% endset %}",
        **{"bomb/part.txt": BIG + "{{ big }}"},
    ),
    # --- loops and recursion ---
    "nested_loops": _txt(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    ),
    "range_product_output": _txt(
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ i * j }}{% endfor %}"
        "{% endfor %}"
    ),
    "recursive_macro": _txt("{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}"),
    "recursive_macro_holding": _txt(
        BIG + "{% macro r(n) %}{% set mine = big ~ n %}{{ r(n + 1)|length }}{% endmacro %}"
        "{{ r(0) }}"
    ),
    "include_self": _txt("x{% include 'bomb/body.txt' %}"),
    "import_self": _txt("{% import 'bomb/body.txt' as me %}{{ me }}"),
    "extends_self": _txt("{% extends 'bomb/body.txt' %}"),
    "recursive_loop": _txt(DOUBLING + "{% for x in [ns.x] recursive %}{{ loop(x) }}{% endfor %}"),
    "loop_cycle": _txt(
        BIG + '{% set ns = namespace(l=["a"]) %}'
        "{% for i in range(100000) %}{% set ns.l = [loop.cycle(big, big), ns.l] %}{% endfor %}"
    ),
    "many_sets_of_fresh_strings": _txt(
        BIG + "{% for i in range(100000) %}{% set x = big ~ i %}{% endfor %}"
    ),
    "sort_in_loop": _txt(
        "{% set l = range(30000)|reverse|list %}"
        "{% for i in range(100000) %}{% set x = l|sort %}{% endfor %}"
    ),
    # --- one filter over a structure built from shared references ---
    "string_of_dag": _txt(DAG + "{{ d|string|length }}"),
    "upper_of_dag": _txt(DAG + "{{ d|upper|length }}"),
    "escape_of_dag": _txt(DAG + "{{ d|e|length }}"),
    "tojson_of_dag": _txt(DAG + "{{ d|tojson|length }}"),
    "join_of_dag": _txt(DAG + "{{ d|join(',')|length }}"),
    "replace_of_dag": _txt(DAG + "{{ d|replace('y', 'yy')|length }}"),
    "format_of_dag": _txt(DAG + "{{ '%s'|format(d)|length }}"),
    "pprint_of_dag": _txt(DAG + "{{ d|pprint|length }}"),
    "wordwrap_of_dag": _txt(DAG + "{{ d|wordwrap(5)|length }}"),
    "indent_of_dag": _txt(DAG + "{{ d|indent(8)|length }}"),
    "list_of_dag": _txt(DAG + "{{ d|list|string|length }}"),
    # Two equal lists of 10 ** 9 numbers, built apart: == compares them all, in C.
    "compare_dags": _txt(
        "{% set ns = namespace(x=[0], y=[0]) %}{% for i in range(9) %}"
        "{% set ns.x = [ns.x, ns.x, ns.x, ns.x, ns.x, ns.x, ns.x, ns.x, ns.x, ns.x] %}"
        "{% set ns.y = [ns.y, ns.y, ns.y, ns.y, ns.y, ns.y, ns.y, ns.y, ns.y, ns.y] %}"
        "{% endfor %}{{ ns.x == ns.y }}"
    ),
    "hash_of_tuple_dag": _txt(
        '{% set ns = namespace(x="z") %}{% for i in range(60) %}{% set ns.x = (ns.x, ns.x) %}'
        "{% endfor %}{{ {ns.x: 1}|length }}"
    ),
    "doubling_string": _txt(DOUBLING + "{{ ns.x|string|length }}"),
    "doubling_tojson": _txt(DOUBLING + "{{ ns.x|tojson|length }}"),
    "dict_doubling": _txt(
        "{% set ns = namespace(d={}) %}{% for i in range(40) %}"
        "{% set ns.d = dict(a=ns.d, b=ns.d) %}{% endfor %}{{ ns.d|tojson|length }}"
    ),
    "deep_nesting": _txt(
        '{% set ns = namespace(x="z") %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}'
        "{% endfor %}{{ ns.x|string|length }}"
    ),
    "tojson_indent_deep": _txt(
        "{% set ns = namespace(x=range(2000)|list) %}{% for i in range(60) %}"
        "{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x|tojson(indent=16)|length }}"
    ),
    "namespace_repr": _txt(
        BIG + "{% set ns = namespace() %}{% set ns.a = big %}{% set ns.b = big %}"
        "{% set ns.c = big %}{% set ns.d = big %}{{ ns|string|length }}"
    ),
    "fromkeys": _txt(BIG + "{% set d = {}.fromkeys(range(100000), big) %}{{ d|string|length }}"),
    # --- operators and methods that multiply ---
    "string_times": _txt('{{ "x" * 1000000000 }}'),
    "list_times": _txt("{{ ([1] * 100000000)|length }}"),
    "power": _txt("{{ 2 ** 100000000 }}"),
    "power_tower": _txt("{% set x = 2 ** 100 %}{{ ((x ** 100) ** 100)|string|length }}"),
    "concat_many": _txt(BIG + "{{ (big ~ big ~ big ~ big ~ big ~ big ~ big ~ big)|length }}"),
    "namespace_concat_doubling": _txt(
        '{% set ns = namespace(s="ab") %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}'
        "{% endfor %}{{ ns.s|length }}"
    ),
    "hex_doubling": _txt(
        '{% set ns = namespace(s="ab") %}{% for i in range(40) %}'
        '{% set ns.s = ns.s.encode("utf-8").hex() %}{% endfor %}{{ ns.s|length }}'
    ),
    "list_filter_doubling": _txt(
        '{% set ns = namespace(s="ab") %}{% for i in range(40) %}'
        "{% set ns.s = ns.s|list|string %}{% endfor %}{{ ns.s|length }}"
    ),
    "tojson_doubling": _txt(
        '{% set ns = namespace(s="\\\\") %}{% for i in range(40) %}'
        "{% set ns.s = ns.s|tojson %}{% endfor %}{{ ns.s|length }}"
    ),
    "escape_doubling_html": _html(
        '{% set ns = namespace(s="&<>") %}{% for i in range(40) %}'
        "{% set ns.s = ns.s|forceescape ~ ns.s|forceescape %}{% endfor %}{{ ns.s }}"
    ),
    "replace_blowup": _txt(BIG + "{{ big|replace('x', big)|length }}"),
    "format_width": _txt("{{ '%1000000000s'|format('x') }}"),
    "format_precision": _txt("{{ '%.1000000000f'|format(1.0) }}"),
    "brace_format_width": _txt("{{ '{:>1000000000}'.format('x') }}"),
    "brace_format_many_fields": _txt(BIG + "{{ ('{0}' * 1000).format(big)|length }}"),
    "center": _txt("{{ 'x'|center(1000000000) }}"),
    "ljust": _txt("{{ 'x'.ljust(1000000000) }}"),
    "zfill": _txt("{{ '1'.zfill(1000000000) }}"),
    "expandtabs": _txt('{{ ("\\t" * 100000).expandtabs(100000)|length }}'),
    "translate": _txt(BIG + "{{ big.translate({120: big})|length }}"),
    "str_join_method": _txt(BIG + "{{ big.join([big, big, big])|length }}"),
    "lipsum": _txt("{{ lipsum(1000000)|length }}"),
    "batch_fill": _txt(BIG + "{{ [1]|batch(100000, big)|list|length }}"),
    "range_huge": _txt("{% for i in range(10 ** 12) %}{% endfor %}"),
    "big_list_of_ints": _txt("{{ range(100000)|list|string|length }}"),
    "list_of_chars_retained": _txt(
        '{% set s = "\\u4e00" * 200000 %}{% set ns = namespace(all=[]) %}'
        "{% for i in range(1000) %}{% set ns.all = [s|list, ns.all] %}{% endfor %}"
    ),
    # --- operations slow on a bounded input ---
    # sum() of 20,000 one-item lists copies 200 million items in C: seconds at a time.
    "sum_of_lists": _txt(
        "{% set lists = range(20000)|batch(1)|list %}"
        "{% for i in range(100000) %}{% set x = lists|sum(start=[]) %}{% endfor %}"
    ),
    "strip_long_chars": _txt(
        '{% set chars = "q" * 200000 ~ "a" %}{{ ("a" * 200000)|trim(chars)|length }}'
    ),
    "strip_method_long_chars": _txt(
        '{% set chars = "q" * 200000 ~ "a" %}{{ ("a" * 200000).strip(chars)|length }}'
    ),
    "punycode": _txt('{{ ("\\u00e9\\u4e00" * 100000).encode("punycode")|length }}'),
    "wordwrap_long_line": _txt(BIG + "{{ big|wordwrap(3)|length }}"),
    "pprint_big": _txt("{{ (range(50000)|batch(1)|list)|pprint|length }}"),
    "urlize_huge": _txt(
        '{% set s = "(www.a" * 40000 %}{% for i in range(100000) %}{{ s|urlize|length }}'
        "{% endfor %}"
    ),
    # --- templates that are expensive to compile ---
    "compile_many_outputs": _txt("{{ a }}" * 3000),
    "compile_many_macros": _txt(
        "".join(
            f"{{% macro m{i}(a, b, c, d, e, f, g, h) %}}{i}{{% endmacro %}}" for i in range(400)
        )
    ),
    "compile_deep_ifs": _txt("{% if 1 %}" * 3000 + "x" + "{% endif %}" * 3000),
    "compile_deep_parens": _txt("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}"),
}
