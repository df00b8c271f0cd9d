"""Runtime hosting: how processes that run user code are started (`sandbox`) and the Python
environments they run in (`environments`)."""
