"""The live status page (``/status``, ``/status.json``): what each profile reports, over the
last minutes.

- :mod:`.readings`: what a runtime's ``status()`` returns (:class:`Gauge`, :class:`Counter`,
  :class:`Latency`) and helpers to build them (:class:`LatencyHistogram`, from Prometheus metrics).
- :mod:`.history`: :class:`StatusHistory`, sans-IO: samples given the time, rates and medians.
- :mod:`.service`: :class:`StatusPage`, the routes and the sampler the server runs.
- :mod:`.page`: the page itself (HTML, CSS and JavaScript inline).
"""

from rendezvous.observe.status.history import StatusHistory
from rendezvous.observe.status.readings import (
                                                Counter,
                                                Gauge,
                                                Latency,
                                                LatencyHistogram,
                                                Reading,
                                                histogram_latency,
                                                metric_value,
                                                metric_values,
                                                quantile,
)
from rendezvous.observe.status.service import StatusPage

__all__ = ["Counter", "Gauge", "Latency", "LatencyHistogram", "Reading", "StatusHistory", "StatusPage",
           "histogram_latency", "metric_value", "metric_values", "quantile"]
