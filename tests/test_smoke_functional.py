from wsevents import WsApp, WsClientError, use_route_params, use_ws_message
from wsevents.testing import prepare_test_ws_message_context


async def test_echo_and_params_over_a_real_socket(ws_client) -> None:
    ws = WsApp(heartbeat=0)

    @ws.on_message("rpc", "/echo")
    def echo():
        return use_ws_message().data

    @ws.on_message("rpc", "/users/:id")
    def user():
        return use_route_params().get("id")

    client = await ws_client(ws)
    assert await client.call("rpc", "/echo", {"a": 1}) == {"a": 1}
    assert await client.call("rpc", "/users/42") == "42"
    try:
        await client.call("rpc", "/missing")
    except WsClientError as exc:
        assert (exc.code, exc.message) == (404, "Not found")
    else:
        raise AssertionError("expected a 404")


def test_message_context_helper_resolves_params() -> None:
    ws = WsApp(heartbeat=0)
    ws.add_message_handler("rpc", "/users/:id", lambda: None)
    with prepare_test_ws_message_context("rpc", "/users/7", {"x": 1}, app=ws):
        assert use_route_params().get("id") == "7"
        assert use_ws_message().data == {"x": 1}
