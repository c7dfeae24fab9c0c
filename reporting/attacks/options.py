"""The options of the attacks report (the ``certify.attacks`` group of every config): the one home of each option.

An option is declared once, here: its type, its default and its docstring (which ``python certify.py --help``
shows). The CLI builds this dataclass from its own signature (a nested group of :class:`~reporting.options.
CertifyOptions`), and :class:`~reporting.attacks.running.AttackReport` reads it.
"""

from dataclasses import dataclass, field


@dataclass
class AttackReportOptions:
    """The attacks report (Amoeba Section 5, Table 4): plain, ``^s`` and ``^a`` attacks (``certify.attacks``).

    The defaults are Amoeba Table 8's MNIST hyperparameters, with C&W shortened for CPU speed.

    Args:
        enabled: Write the attacks report (``attacks.json``, ``attacks.md``, ``attacks.pt`` and the
            ``certify/attacks/...`` tags).
        num_examples: Cap on the examples attacked (the first ones of the certified examples).
        fgsm_eps: FGSM l_inf budgets (Amoeba Table 8, MNIST: 0.2 and 0.3).
        pgd_linf_eps: PGD l_inf budget (Table 8: 0.2).
        pgd_linf_step_size: PGD l_inf step ``alpha`` (Table 8: 0.015).
        pgd_linf_steps: PGD l_inf steps ``n`` (Table 8: 20).
        pgd_l2_eps: PGD l_2 budget (Table 8: 5.0 for MNIST/FMNIST, 10.0 for SVHN).
        pgd_l2_step_size: PGD l_2 step (Table 8: 0.5).
        pgd_l2_steps: PGD l_2 steps (Table 8: 20).
        pgd_restarts: Runs of each PGD attack (l_inf and l_2, plain and guided) from fresh random starts; an example
            keeps the first run that fools the model, else the last (Madry et al. 2018 report PGD with restarts;
            1: one run, as Amoeba Table 8).
        cw_kappa: C&W confidence ``kappa`` (Table 8: 0).
        cw_search_steps: C&W binary-search steps over its constant ``c`` (the reference code: 9).
        cw_max_iterations: C&W Adam iterations per search step (the reference code: 10,000).
        cw_c_init: C&W's initial trade-off constant ``c`` (the reference code: 1e-3).
        cw_lr: C&W's Adam learning rate (the reference code: 1e-2 with 10,000 iterations).
        p_start: First proportion of pixels of the guided attacks (Amoeba Algorithm 2).
        p_step: Increase of the proportion per round of Algorithm 2.
        p_max: Last proportion of Algorithm 2.

    Raises:
        ValueError: On a non-positive ``num_examples``, negative budgets, steps or kappa, step counts below 1,
            non-positive ``cw_c_init`` or ``cw_lr``, or proportions outside ``0 <= p_start <= p_max <= 1``,
            ``p_step > 0``.
    """

    enabled: bool = True
    num_examples: int = 200
    fgsm_eps: list[float] = field(default_factory=lambda: [0.2, 0.3])
    pgd_linf_eps: float = 0.2
    pgd_linf_step_size: float = 0.015
    pgd_linf_steps: int = 20
    pgd_l2_eps: float = 5.0
    pgd_l2_step_size: float = 0.5
    pgd_l2_steps: int = 20
    pgd_restarts: int = 1
    cw_kappa: float = 0.0
    cw_search_steps: int = 6
    cw_max_iterations: int = 200
    cw_c_init: float = 1e-2
    cw_lr: float = 5e-2
    p_start: float = 0.1
    p_step: float = 0.1
    p_max: float = 1.0

    def __post_init__(self) -> None:
        """Check the options and store the budgets as floats."""
        if self.num_examples < 1:
            raise ValueError(f"certify.attacks.num_examples must be >= 1, got {self.num_examples}")
        self.fgsm_eps = [float(eps) for eps in self.fgsm_eps]
        budgets = [*self.fgsm_eps, self.pgd_linf_eps, self.pgd_linf_step_size, self.pgd_l2_eps,
                   self.pgd_l2_step_size, self.cw_kappa]
        if any(value < 0 for value in budgets):
            raise ValueError(f"attack budgets, step sizes and kappa must be >= 0, got {budgets}")
        if min(self.pgd_linf_steps, self.pgd_l2_steps, self.pgd_restarts, self.cw_search_steps,
               self.cw_max_iterations) < 1:
            raise ValueError("attack step counts and pgd_restarts must be >= 1")
        if not (0.0 <= self.p_start <= self.p_max <= 1.0) or self.p_step <= 0:
            raise ValueError(f"need 0 <= p_start <= p_max <= 1 and p_step > 0, got {self.p_start}, {self.p_max}, "
                             f"{self.p_step}")
        if self.cw_c_init <= 0 or self.cw_lr <= 0:
            raise ValueError(f"cw_c_init and cw_lr must be > 0, got {self.cw_c_init}, {self.cw_lr}")
