"""Verdicts from the spectral pass (`analyze --spectral`): models the merged subspace leaves out.

The SAR is a measurement only where the summed task vector's 95 % subspace fitted in K directions. Where
it needed more (`sar_capped`), P is the top-K subspace and the SAR measures the cap — real fine-tunes of
large models are that case at K = 64 — so the finding stays silent and says once why there is no verdict.
"""

from __future__ import annotations

from mergescope.stats.report import Finding

# Subspace alignment ratio: a merge's gap to its specialists (scripts/metric_evidence.py, 10 member sets x
# 6 methods per family, K = 64, no matrix capped) tracks the members' mean SAR, Spearman -0.79 pooled on
# the demo family and -0.73 on the second one (6 layers, hidden 96, other data). Sets whose members all
# kept SAR >= 0.93 matched their specialists (demo -0.013..+0.026 bits per byte, second -0.015..+0.043);
# every set with a member below 0.90 lost >= 0.05 (demo) / >= 0.06 (second) bits per byte with every method.
SAR_NOTE = 0.90


def spectral_findings(report) -> list[Finding]:
    if report.spectral is None or report.n < 2:
        return []
    whole = report.spectral.whole()
    if whole.total.sar_capped:
        return [
            Finding(
                "info",
                "sar-capped",
                None,
                f"no subspace-alignment verdict: in {whole.sar_capped:.0%} of the matrices 95 % of the summed task "
                f"vector's energy needed more than K = {report.spectral.rank} directions, so the SAR measures that "
                "cap, not the alignment (the 90 % threshold was calibrated on uncapped SARs); raise --rank to judge it",
            )
        ]
    out = []
    for i, m in enumerate(report.models):
        sar = whole.sar(i)
        if whole.total.sq[i] > 0 and sar < SAR_NOTE:
            out.append(
                Finding(
                    "info",
                    "low-subspace-alignment",
                    m,
                    f"its task vector keeps only {sar:.0%} of its norm in the top subspace of the summed task "
                    f"vector (SAR; on two trained families every merge with a member below {SAR_NOTE:.0%} lost "
                    ">= 0.05 bits per byte against its specialists, sets at >= 93 % matched them): lower the other "
                    "models' weights where they dominate, or merge it in fewer layers",
                )
            )
    return out
