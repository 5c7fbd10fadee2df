"""Imported once by the fork server of `components.data.media`'s extraction pool, which its workers fork from: they
start with the libraries imported, librosa's first-call costs paid, and BLAS at one thread (a worker is one core's
worth of work; two-thread BLAS in each of N workers would oversubscribe the cores)."""

from threadpoolctl import threadpool_limits

from components.data.media import warm_up

__all__: list[str] = []  # imported for what importing it does, not for names

threadpool_limits(1)
warm_up()
