"""ClientNode's waits: they end when the condition holds, and otherwise fail saying why."""
import pytest

from vlm3r_ros.ros.client_node import ClientNode, ProcessExited, WaitTimeout


class Proc:
    def __init__(self, running, text='child x (pid 1, exited with 3); its output: boom'):
        self._running, self.text = running, text

    def running(self):
        return self._running

    def describe(self):
        return self.text


def test_spin_until_returns_when_done_and_close_is_idempotent():
    ros = ClientNode('vlm3r_client_node_test', namespace='/client_node_test')
    calls = []
    ros.spin_until(lambda: calls.append(1) or len(calls) >= 3, 5.0, 'three polls', watch=[Proc(True)], step_s=0.01)
    assert len(calls) == 3
    assert ros.node.get_namespace() == '/client_node_test'
    second = ros.add_node('vlm3r_client_node_test_2')
    assert ros.nodes == [ros.node, second]
    ros.close()
    ros.close()
    assert ros.context is None


def test_a_watched_process_that_exited_ends_the_wait_with_its_description():
    exited = Proc(False)
    with ClientNode('vlm3r_client_node_test') as ros:
        with pytest.raises(ProcessExited, match=r'^the answer: a process exited first\. 2 of 3 done\. '
                                                r'child x \(pid 1, exited with 3\); its output: boom$') as info:
            ros.spin_until(lambda: False, 30.0, 'the answer', watch=[Proc(True, 'alive'), exited],
                           details=lambda: '2 of 3 done')
    assert info.value.process is exited


def test_a_timeout_names_what_was_awaited_and_every_watched_process():
    with ClientNode('vlm3r_client_node_test') as ros:
        with pytest.raises(WaitTimeout, match=r"^the reply: not done after 0\.2 s\. node alive$"):
            ros.spin_until(lambda: False, 0.2, 'the reply', watch=[Proc(True, 'node alive')], step_s=0.02)
