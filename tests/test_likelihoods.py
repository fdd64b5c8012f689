"""vaescope.models.likelihoods: each log p(x|z) against an independent implementation (torch.distributions, scVI's
formula written out, closed forms), today's two likelihoods bit for bit, and each refusal of bad data."""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as D

from vaescope.core.errors import VaescopeError
from vaescope.models.likelihood_base import sum_rows
from vaescope.models.likelihoods import (
    Bernoulli,
    Categorical,
    FromDistribution,
    FromFunction,
    Gaussian,
    Likelihood,
    NegativeBinomial,
    Poisson,
    resolve_likelihood,
)
from vaescope.models import objectives

B = 5


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def logits_and_grey(shape=(B, 1, 4, 4), seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(shape, generator=gen(seed)) * 2
    x = torch.rand(shape, generator=gen(seed + 1))
    return logits, x


def summed(log_prob: torch.Tensor) -> torch.Tensor:
    """The independent sum over non-batch dims (written apart from the module's sum_rows)."""
    return log_prob.sum(dim=tuple(range(1, log_prob.ndim)))


def one_line_error(excinfo: pytest.ExceptionInfo, *words: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)


# ---------------------------------------------------------------------------- today's two, bit for bit

@pytest.mark.parametrize("shape", [(B, 1, 4, 4), (B, 7), (B, 2, 3, 3)])
def test_bernoulli_and_gaussian_names_give_exactly_todays_numbers(shape):
    logits, x = logits_and_grey(shape)
    for kind in ("bernoulli", "gaussian"):
        ours = resolve_likelihood(kind).log_likelihood(x, logits)
        today = objectives.log_likelihood(logits, x, kind)
        assert ours.shape == (B,) and torch.equal(ours, today), kind
    # control: equality is not trivial (the two kinds differ, and another variance differs)
    assert not torch.equal(resolve_likelihood("bernoulli").log_likelihood(x, logits),
                           objectives.log_likelihood(logits, x, "gaussian"))
    assert not torch.equal(resolve_likelihood("gaussian:0.4").log_likelihood(x, logits),
                           objectives.log_likelihood(logits, x, "gaussian"))


def test_flat_decoder_output_for_image_data_as_today():
    logits, x = logits_and_grey((B, 1, 4, 4))
    flat = logits.reshape(B, 16)
    assert torch.equal(Bernoulli().log_likelihood(x, flat), objectives.log_likelihood(flat, x, "bernoulli"))


# ---------------------------------------------------------------------------- against torch.distributions

def test_bernoulli_logits_and_probs_against_torch():
    logits, _ = logits_and_grey((B, 2, 3, 3))
    x = (torch.rand(logits.shape, generator=gen(3)) > 0.5).float()
    expected = summed(D.Bernoulli(logits=logits).log_prob(x))
    torch.testing.assert_close(Bernoulli(logits=True).log_likelihood(x, logits), expected, rtol=1e-6, atol=1e-5)
    probs = torch.sigmoid(logits)
    torch.testing.assert_close(Bernoulli(logits=False).log_likelihood(x, probs),
                               summed(D.Bernoulli(probs=probs).log_prob(x)), rtol=1e-5, atol=1e-4)
    assert torch.equal(Bernoulli().mean(logits), probs) and torch.equal(Bernoulli(logits=False).mean(probs), probs)


def test_gaussian_fixed_variance_against_torch_and_closed_form():
    mean = torch.randn(B, 2, 3, generator=gen(4))
    x = torch.randn(B, 2, 3, generator=gen(5))
    for variance in (0.1, 0.5, 2.0):
        expected = summed(D.Normal(mean, math.sqrt(variance)).log_prob(x))
        torch.testing.assert_close(Gaussian(variance).log_likelihood(x, mean), expected, rtol=1e-6, atol=1e-5)
    # closed form: at x = mean, log p = -(P / 2) log(2 pi v), P = 6 elements
    torch.testing.assert_close(Gaussian(0.5).log_likelihood(mean, mean),
                               torch.full((B,), -3.0 * math.log(math.pi)), rtol=1e-6, atol=1e-6)
    # the sigmoid link reads logits: N(sigmoid(logits), v)
    torch.testing.assert_close(Gaussian(0.1, link="sigmoid").log_likelihood(x, mean),
                               summed(D.Normal(torch.sigmoid(mean), math.sqrt(0.1)).log_prob(x)), rtol=1e-6, atol=1e-5)
    assert torch.equal(Gaussian(0.1, link="sigmoid").mean(mean), torch.sigmoid(mean))


def test_gaussian_decoded_variance_tuple_and_dict_against_torch():
    mean = torch.randn(B, 4, generator=gen(6))
    logvar = torch.randn(B, 4, generator=gen(7))
    x = torch.randn(B, 4, generator=gen(8))
    expected = summed(D.Normal(mean, torch.exp(0.5 * logvar)).log_prob(x))
    lik = resolve_likelihood("gaussian:decoded")
    torch.testing.assert_close(lik.log_likelihood(x, (mean, logvar)), expected, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(lik.log_likelihood(x, {"mean": mean, "logvar": logvar}), expected, rtol=1e-6, atol=1e-5)
    assert torch.equal(lik.mean((mean, logvar)), mean)
    per_variable = torch.randn(4, generator=gen(9))  # a learned per-variable logvar broadcasts
    torch.testing.assert_close(lik.log_likelihood(x, (mean, per_variable)),
                               summed(D.Normal(mean, torch.exp(0.5 * per_variable)).log_prob(x)), rtol=1e-6, atol=1e-5)


def test_categorical_against_torch_and_uniform_closed_form():
    logits = torch.randn(B, 6, 11, generator=gen(10))          # (B, T, V)
    ids = torch.randint(0, 11, (B, 6), generator=gen(11))      # (B, T)
    expected = summed(D.Categorical(logits=logits).log_prob(ids))
    torch.testing.assert_close(Categorical().log_likelihood(ids, logits), expected, rtol=1e-6, atol=1e-5)
    # uniform logits over V = 4, T = 3 tokens: log p = -3 log 4 whatever the ids
    uniform = Categorical().log_likelihood(torch.tensor([[0, 1, 3], [2, 2, 2]]), torch.zeros(2, 3, 4))
    torch.testing.assert_close(uniform, torch.full((2,), -3 * math.log(4.0)))
    probs = Categorical().mean(logits)
    assert probs.shape == (B, 6, 11)
    torch.testing.assert_close(probs.sum(-1), torch.ones(B, 6))


def test_poisson_against_torch_and_closed_form():
    log_rate = torch.randn(B, 7, generator=gen(12))
    counts = torch.poisson(torch.exp(log_rate), generator=gen(13)).long()
    expected = summed(D.Poisson(torch.exp(log_rate)).log_prob(counts.float()))
    torch.testing.assert_close(Poisson().log_likelihood(counts, log_rate), expected, rtol=1e-6, atol=1e-5)
    # x = 0 at rate 2: log p = -2; x = 2 at rate 1: log(e^-1 / 2!) = -1 - log 2
    known = Poisson().log_likelihood(torch.tensor([[0], [2]]), torch.log(torch.tensor([[2.0], [1.0]])))
    torch.testing.assert_close(known, torch.tensor([-2.0, -1.0 - math.log(2.0)]))
    assert torch.equal(Poisson().mean(log_rate), torch.exp(log_rate))


def scvi_log_nb_positive(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """scVI's ``log_nb_positive`` (scvi.distributions._negative_binomial), written out by hand."""
    log_theta_mu_eps = torch.log(theta + mu + eps)
    return (theta * (torch.log(theta + eps) - log_theta_mu_eps) + x * (torch.log(mu + eps) - log_theta_mu_eps)
            + torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1))


def test_negative_binomial_parameterisation_against_scvi_and_torch():
    genes = 6
    mu = torch.exp(torch.randn(B, genes, generator=gen(14)))             # decoded mean (B, G)
    log_theta = torch.randn(genes, generator=gen(15))                    # gene-wise, as scVI's px_r
    theta = torch.exp(log_theta).expand(B, genes)
    counts = torch.poisson(mu * 3, generator=gen(16))
    ours = NegativeBinomial().log_likelihood(counts.long(), (mu, log_theta))
    torch.testing.assert_close(ours, scvi_log_nb_positive(counts, mu, theta).sum(1), rtol=1e-5, atol=1e-4)
    # torch's NB counts successes with p = sigmoid(logits): mean = total_count * exp(logits) = mu
    torch_nb = D.NegativeBinomial(total_count=theta, logits=torch.log(mu / theta))
    torch.testing.assert_close(torch_nb.mean, mu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch_nb.variance, mu + mu.square() / theta, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, summed(torch_nb.log_prob(counts)), rtol=1e-5, atol=1e-4)
    as_dict = NegativeBinomial().log_likelihood(counts, {"mean": mu, "log_theta": log_theta})
    assert torch.equal(as_dict, ours)
    assert torch.equal(NegativeBinomial().mean((mu, log_theta)), mu)


def test_negative_binomial_closed_form_geometric():
    # theta = 1, mu = 1: p(x) = (1/2)^(x+1): x = 0 -> log 1/2, x = 2 -> log 1/8; exact at mu = 0, x = 0: 0
    ll = NegativeBinomial().log_likelihood(torch.tensor([[0.0], [2.0]]), (torch.ones(2, 1), torch.zeros(2, 1)))
    torch.testing.assert_close(ll, torch.tensor([math.log(0.5), math.log(0.125)]))
    zero = NegativeBinomial().log_likelihood(torch.zeros(1, 1), (torch.zeros(1, 1), torch.zeros(1, 1)))
    assert torch.equal(zero, torch.zeros(1))


def test_from_distribution_sums_log_prob_over_non_batch_dims():
    loc = torch.randn(B, 3, 2, generator=gen(17))
    x = torch.randn(B, 3, 2, generator=gen(18))
    expected = D.Normal(loc, 0.7).log_prob(x).sum((1, 2))
    lik = FromDistribution()
    torch.testing.assert_close(lik.log_likelihood(x, D.Normal(loc, 0.7)), expected)
    torch.testing.assert_close(lik.log_likelihood(x, D.Independent(D.Normal(loc, 0.7), 2)), expected)
    assert torch.equal(lik.mean(D.Normal(loc, 0.7)), loc)


def test_from_function_and_its_checks():
    lik = resolve_likelihood(lambda x, d: -(x - d).abs().sum(1))
    assert isinstance(lik, FromFunction)
    x, d = torch.ones(3, 2), torch.zeros(3, 2)
    assert torch.equal(lik.log_likelihood(x, d), torch.full((3,), -2.0))
    with pytest.raises(VaescopeError) as excinfo:
        FromFunction(lambda x, d: (x - d).sum()).log_likelihood(x, d)
    one_line_error(excinfo, "returned ()", "(3,)")
    with pytest.raises(VaescopeError) as excinfo:
        lik.mean(d)
    one_line_error(excinfo, "mean_fn=")
    assert torch.equal(FromFunction(lik.fn, mean_fn=lambda d: d + 1).mean(d), torch.ones(3, 2))


def test_sum_over_non_batch_dims():
    values = torch.arange(24.0).reshape(2, 3, 4)
    assert torch.equal(sum_rows(values), torch.tensor([66.0, 210.0]))
    assert torch.equal(sum_rows(torch.tensor([1.0, 2.0])), torch.tensor([1.0, 2.0]))
    assert sum_rows(torch.zeros(0, 3, 4)).shape == (0,)
    # one element changed in row 1 moves row 1 only, by that element's own log-likelihood difference
    logits, x = logits_and_grey((2, 3, 4))
    moved = x.clone()
    moved[1, 2, 3] = 1.0 - x[1, 2, 3]
    delta = Bernoulli().log_likelihood(moved, logits) - Bernoulli().log_likelihood(x, logits)
    element = D.Bernoulli(logits=logits[1, 2, 3], validate_args=False)  # grey levels: the cross-entropy
    torch.testing.assert_close(delta, torch.stack([torch.tensor(0.0), element.log_prob(moved[1, 2, 3])
                                                   - element.log_prob(x[1, 2, 3])]), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- refusals

def test_bernoulli_refuses_values_outside_unit_interval():
    Bernoulli().check(torch.tensor([[0.0, 0.5, 1.0]]))  # control: valid data pass
    with pytest.raises(VaescopeError) as excinfo:
        Bernoulli().check(torch.tensor([[-0.3, 0.5]]))
    one_line_error(excinfo, "Bernoulli", "min -0.3", "likelihood=")
    with pytest.raises(VaescopeError) as excinfo:
        Bernoulli().check(torch.tensor([[0, 255]], dtype=torch.int64))
    one_line_error(excinfo, "max 255", "likelihood=")
    with pytest.raises(VaescopeError):
        Bernoulli().check(torch.tensor([[float("nan"), 0.5]]))


def test_categorical_refuses_non_integers_and_ids_out_of_range():
    Categorical(vocab_size=5).check(torch.tensor([[0, 4]]))  # control
    with pytest.raises(VaescopeError) as excinfo:
        Categorical().check(torch.tensor([[0.0, 1.0]]))
    one_line_error(excinfo, "integer token ids", "float32", "likelihood=")
    with pytest.raises(VaescopeError) as excinfo:
        Categorical(vocab_size=5).check(torch.tensor([[0, 5]]))
    one_line_error(excinfo, "over 5 tokens", "from 0 to 5", "likelihood=")
    with pytest.raises(VaescopeError) as excinfo:
        Categorical().check(torch.tensor([[-1, 2]]))
    one_line_error(excinfo, "from -1 to 2")
    with pytest.raises(VaescopeError) as excinfo:  # at log_likelihood time, against the decoded V
        Categorical().log_likelihood(torch.tensor([[0, 4]]), torch.zeros(1, 2, 4))
    one_line_error(excinfo, "over 4 tokens", "from 0 to 4")
    with pytest.raises(VaescopeError) as excinfo:
        Categorical().log_likelihood(torch.tensor([[0, 1]]), torch.zeros(1, 3, 4))
    one_line_error(excinfo, "(1, 3, 4)", "(1, 2)", "likelihood=")


@pytest.mark.parametrize("lik", [Poisson(), NegativeBinomial()], ids=lambda lik: lik.name)
def test_count_likelihoods_refuse_negative_or_fractional_counts(lik: Likelihood):
    lik.check(torch.tensor([[0, 3, 7]]))            # control: integer counts
    lik.check(torch.tensor([[0.0, 3.0, 7.0]]))      # and whole counts stored as floats
    with pytest.raises(VaescopeError) as excinfo:
        lik.check(torch.tensor([[1, -2]]))
    one_line_error(excinfo, lik.name, "min -2", "likelihood=")
    with pytest.raises(VaescopeError) as excinfo:
        lik.check(torch.tensor([[1.0, 0.5]]))
    one_line_error(excinfo, lik.name, "non-integers", "0.5", "likelihood=")


def test_shape_and_decoded_form_refusals():
    with pytest.raises(VaescopeError) as excinfo:
        Bernoulli().log_likelihood(torch.zeros(2, 4), torch.zeros(2, 5))
    one_line_error(excinfo, "(2, 5)", "(2, 4)", "likelihood=")
    with pytest.raises(VaescopeError) as excinfo:
        Gaussian("decoded").log_likelihood(torch.zeros(2, 4), torch.zeros(2, 4))
    one_line_error(excinfo, "(mean, logvar)", "likelihood=")
    with pytest.raises(VaescopeError) as excinfo:
        NegativeBinomial().log_likelihood(torch.zeros(2, 4), {"rate": torch.ones(2, 4)})
    one_line_error(excinfo, "(mean, log_theta)", "'rate'", "likelihood=")
    with pytest.raises(VaescopeError) as excinfo:
        FromDistribution().log_likelihood(torch.full((2, 1), 2.0), D.Bernoulli(logits=torch.zeros(2, 1)))
    one_line_error(excinfo, "Bernoulli refused the data", "likelihood=")
    with pytest.raises(VaescopeError) as excinfo:
        FromDistribution().log_likelihood(torch.zeros(2, 1), torch.zeros(2, 1))
    one_line_error(excinfo, "Distribution", "likelihood=")


# ---------------------------------------------------------------------------- the resolver

def test_resolver_names():
    assert isinstance(resolve_likelihood("bernoulli"), Bernoulli) and resolve_likelihood("bernoulli").logits
    g = resolve_likelihood("Gaussian")
    assert isinstance(g, Gaussian) and (g.variance, g.link) == (0.5, "sigmoid")
    assert g.describe() == "Gaussian on sigmoid(decoded), fixed variance 0.5"
    g = resolve_likelihood("gaussian:0.1")
    assert (g.variance, g.link) == (0.1, "sigmoid")
    g = resolve_likelihood("gaussian:decoded")
    assert (g.variance, g.link) == ("decoded", "identity")
    assert isinstance(resolve_likelihood("categorical"), Categorical)
    assert isinstance(resolve_likelihood("poisson"), Poisson)
    assert isinstance(resolve_likelihood("negative-binomial"), NegativeBinomial)
    assert isinstance(resolve_likelihood("negative_binomial"), NegativeBinomial)
    mine = Poisson()
    assert resolve_likelihood(mine) is mine


def test_resolver_inference():
    assert isinstance(resolve_likelihood(None), Bernoulli)
    assert isinstance(resolve_likelihood(None, torch.zeros(2, 3)), Bernoulli)
    assert isinstance(resolve_likelihood(None, D.Normal(torch.zeros(2), 1.0)), FromDistribution)
    for ambiguous in ((torch.zeros(2), torch.zeros(2)), {"mean": torch.zeros(2), "logvar": torch.zeros(2)}):
        with pytest.raises(VaescopeError) as excinfo:
            resolve_likelihood(None, ambiguous)
        one_line_error(excinfo, "cannot be inferred", "likelihood=")


def test_resolver_refusals():
    for spec, words in [("gaussian:abc", ("'abc'", "likelihood=")), ("gaussian:-1", ("not a positive",)),
                        ("laplace", ("not known", "likelihood=")), ("poisson:2", ("only 'gaussian'",)),
                        (Poisson, ("likelihood=Poisson()",)), (3.5, ("likelihood=",))]:
        with pytest.raises(VaescopeError) as excinfo:
            resolve_likelihood(spec)
        one_line_error(excinfo, *words)
    with pytest.raises(VaescopeError) as excinfo:
        Gaussian(variance=0.0)
    one_line_error(excinfo, "positive number")
