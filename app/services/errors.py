"""Errors of the use-case layer, independent of the transport that reports them."""


class ServiceError(Exception):
    pass


class ModelNotFound(ServiceError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no model named {name!r}; known models: {', '.join(known) or 'none'}")
        self.name = name


class ModelUnavailable(ServiceError):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class WrongModelKind(ServiceError):
    def __init__(self, name: str, kind: str, wanted: str) -> None:
        super().__init__(f"model {name!r} is a {kind} model; this endpoint needs a {wanted} model")
        self.name = name
