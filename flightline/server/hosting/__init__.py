"""Runtime hosting: where runtime servers run (the `backend` interface and its local-process
implementation `local`), how processes that run user code are started (`sandbox`) and the Python
environments they run in (`environments`)."""
