import perdure


def test_public_names_are_pinned() -> None:
    assert perdure.__all__ == [
        "App",
        "Call",
        "ChildFailed",
        "Client",
        "Cron",
        "Lifecycle",
        "NonRetryable",
        "NonRetryableError",
        "PerdureError",
        "Retry",
        "RetryAfter",
        "RunHandle",
        "RunStatus",
        "Secret",
        "Step",
        "Task",
        "Token",
        "continue_as_new",
        "create_token",
        "errors",
        "metadata",
        "now",
        "patched",
        "random",
        "receive",
        "secret",
        "sleep",
        "sleep_until",
        "step_key",
        "stream",
        "uuid4",
        "wait_for_event",
        "wait_for_token",
    ]
    for name in perdure.__all__:
        assert getattr(perdure, name) is not None


def test_every_error_derives_from_perdure_error() -> None:
    from perdure import errors

    public = [
        getattr(errors, name)
        for name in dir(errors)
        if isinstance(getattr(errors, name), type) and issubclass(getattr(errors, name), Exception)
    ]
    assert len(public) > 15
    assert all(issubclass(cls, errors.PerdureError) for cls in public)
    # signals must not be catchable with `except Exception`
    assert not issubclass(errors.Suspend, Exception)
    assert not issubclass(errors.CancelSignal, Exception)
