"""The C++ source of a chain's kernel: its members' rules written into loops.

:func:`kernel_source` turns the rules of a :func:`jaxreg.chain` (see ``jaxreg/_rules.py``)
and the leaf variants of a plan (which members act on which leaves) into one C++ file
whose ``extern "C"`` functions have the types that ``abi.h`` declares; each function is
checked against its type with a ``static_assert``. ``step.cc`` calls them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from jaxreg import _rules

_STAGE0_ARGS = (
    "const float* __restrict g, float* __restrict w, float* const* slots, const bool* const* inputs,"
    " const float* S, const float* L, int64_t n, int64_t* __restrict C"
)
_ROWS_ARGS = (
    "float* __restrict w, const float* S, int64_t rows, int64_t cols, int64_t stride, const float* __restrict F"
)
_ONE_ARGS = "float* __restrict w, const float* S, int64_t n, const float f"


def kernel_source(
    rules: Sequence[_rules.Rule],
    n_scalars: Sequence[int],
    n_slots: Sequence[int],
    n_inputs: Sequence[int],
    variants: Sequence[Sequence[int]],
    leafwise: Sequence[bool],
) -> tuple[str, list[str]]:
    """C++ of each variant's functions, and their names in the order ``jaxreg_step`` reads them.

    Stage 0 runs the active members up to the first per-unit one; each per-unit member
    starts a stage (its factor, and its rescaling followed by the members up to the next,
    for rows of units or for one unit). Rule ``i`` reads ``n_scalars[i]`` scalars,
    ``n_slots[i]`` state slots and ``n_inputs[i]`` read-only bool arrays (stage 0 only
    reads those); scalar ``k`` of all rules in order comes from the shared table ``S``,
    or from this leaf's row ``L`` of the leaf table where ``leafwise[k]`` (stage 0 only
    reads those). The functions of variant ``v`` come in the order stage 0, then factor,
    rows and one for every further stage.
    """
    scalar_base = np.cumsum([0, *n_scalars]).tolist()
    slot_base = np.cumsum([0, *n_slots]).tolist()
    input_base = np.cumsum([0, *n_inputs]).tolist()
    counter_base = np.cumsum([0, *(r.n_counters for r in rules)]).tolist()
    shared = np.cumsum([0, *(not x for x in leafwise)]).tolist()
    column = np.cumsum([0, *leafwise]).tolist()
    scalars = [f"  const float s{k} = S[{shared[k]}];" for k in range(scalar_base[-1]) if not leafwise[k]]
    leaf_scalars = [f"  const float s{k} = L[{column[k]}];" for k in range(scalar_base[-1]) if leafwise[k]]

    def local(i: int, code: str) -> str:
        # Each rule's placeholders become the kernel's variables: rule i's @s0 is the
        # first of its own scalars, and so on (Rule checks that it names only its own).
        code = re.sub(r"@s(\d+)", lambda m: f"s{scalar_base[i] + int(m.group(1))}", code)
        code = re.sub(r"@c(\d+)", lambda m: f"c{counter_base[i] + int(m.group(1))}", code)
        code = re.sub(r"@k(\d+)", lambda m: f"k{input_base[i] + int(m.group(1))}", code)
        return re.sub(r"@m(\d+)", lambda m: f"m{slot_base[i] + int(m.group(1))}", code)

    def function(
        name: str, args: str, loop: str, first: Sequence[str], members: Sequence[int], stage0: bool = False
    ) -> list[str]:
        # Only stage 0 reads the leaf's own scalars and the inputs, and counts: int32
        # within a call (one chunk), then added to C.
        counters = range(counter_base[-1] if stage0 else 0)
        return [
            f'extern "C" void {name}({args}) {{',
            *scalars,
            *(leaf_scalars if stage0 else []),
            *(f"  float* __restrict m{k} = slots[{k}];" for k in range(slot_base[-1]) if stage0),
            # The masks are read as bytes: GCC 12 does not vectorize a float loop that loads
            # a bool (the pruned step ran 5x slower), and XLA's bools are the bytes 0 and 1.
            *(
                f"  const unsigned char* __restrict k{j} = reinterpret_cast<const unsigned char*>(inputs[{j}]);"
                for j in range(input_base[-1] if stage0 else 0)
            ),
            *(f"  int32_t c{k} = 0;" for k in counters),
            f"  {loop} {{",
            *(f"    {line}" for line in first),
            *(f"    {local(i, rules[i].code)}" for i in members),
            "    w[i] = wi + u;",
            "  }",
            *(f"  C[{k}] += c{k};" for k in counters),
            "}",
        ]

    lines, names, types = ['#include "abi.h"'], [], []
    for v, active in enumerate(variants):
        cuts = [k for k, i in enumerate(active) if rules[i].factor is not None]
        stages = [active[a:b] for a, b in zip([0, *cuts], [*cuts, len(active)])]
        names.append(f"jaxreg_v{v}_stage0")
        types.append("Stage0")
        lines += function(
            names[-1],
            _STAGE0_ARGS,
            "for (int64_t i = 0; i < n; ++i)",
            ["const float wi = w[i];", "float u = g[i];"],
            stages[0],
            stage0=True,
        )
        for k, members in enumerate(stages[1:], start=1):
            factor = local(members[0], rules[members[0]].factor)
            names += [f"jaxreg_v{v}_factor{k}", f"jaxreg_v{v}_rows{k}", f"jaxreg_v{v}_one{k}"]
            types += ["Factor", "Rows", "One"]
            lines += [
                f'extern "C" void {names[-3]}(float* F, const float* S, int64_t n) {{',
                *scalars,
                f"  for (int64_t j = 0; j < n; ++j) {{ const float ss = F[j]; float f; {{ {factor} }} F[j] = f; }}",
                "}",
            ]
            lines += function(
                names[-2],
                _ROWS_ARGS,
                "for (int64_t r = 0; r < rows; ++r) for (int64_t j = 0; j < cols; ++j)",
                [
                    "const int64_t i = r * stride + j;",
                    "const float f = F[j];",
                    "const float wi = w[i];",
                    "float u = 0.0f;",
                ],
                members,
            )
            lines += function(
                names[-1],
                _ONE_ARGS,
                "for (int64_t i = 0; i < n; ++i)",
                ["const float wi = w[i];", "float u = 0.0f;"],
                members,
            )
    lines += [
        f'static_assert(std::is_same_v<decltype(&{name}), jaxreg::{kind}>, "{name}: not the type abi.h gives");'
        for name, kind in zip(names, types)
    ]
    return "\n".join(lines) + "\n", names
