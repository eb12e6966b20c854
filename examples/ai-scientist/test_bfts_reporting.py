"""Unit tests of bfts_reporting.py with a fake AgentManager, journal and token tracker shaped
as AI-Scientist-v2's (ai_scientist/treesearch/{agent_manager,journal}.py,
ai_scientist/utils/token_tracker.py): python3 -m unittest discover -s examples/ai-scientist
(run by tests/python_report.rs)."""

import os
import sys
import unittest
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bfts_reporting  # noqa: E402


class RecordingReport:
    """scientist_report's Reporter as far as bfts_reporting uses it, recording each call."""

    def __init__(self):
        self.calls = []
        self.current_stage = None

    def __getattr__(self, name):
        def record(*args, **kwargs):
            self.calls.append((name, args, {key: value for key, value in kwargs.items() if value is not None}))
        return record

    def of(self, name):
        return [(args, kwargs) for called, args, kwargs in self.calls if called == name]


@dataclass
class MetricValue:
    value: object
    maximize: bool = False
    name: str = None

    def __gt__(self, other):
        ours, theirs = self.value, other.value
        return ours > theirs if self.maximize else ours < theirs

    def __str__(self):
        return "Metric%s(%.4f)" % ("↑" if self.maximize else "↓", self.value)


@dataclass(eq=False)
class Node:
    id: str
    parent: "Node" = None
    is_buggy: bool = None
    is_buggy_plots: bool = None
    metric: MetricValue = None
    analysis: str = None
    exec_time: float = None
    exc_type: str = None


@dataclass
class Journal:
    nodes: list = field(default_factory=list)

    @property
    def good_nodes(self):
        return [n for n in self.nodes if n.is_buggy is False and n.is_buggy_plots is False]

    @property
    def buggy_nodes(self):
        return [n for n in self.nodes if n.is_buggy]

    def get_best_node(self, only_good=True, use_val_metric_only=False):
        if not use_val_metric_only:
            raise AssertionError("get_best_node without use_val_metric_only asks an LLM")
        nodes = self.good_nodes if only_good else self.nodes
        return max(nodes, key=lambda n: n.metric) if nodes else None


@dataclass
class Stage:
    name: str
    description: str
    goals: str
    max_iterations: int
    num_drafts: int
    stage_number: int


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def good(node_id, value, parent=None):
    return Node(node_id, parent=parent, is_buggy=False, is_buggy_plots=False, metric=MetricValue(value),
                analysis="trained fine " * 100, exec_time=12.5)


class TreeSearch(unittest.TestCase):
    def setUp(self):
        self.report = RecordingReport()
        self.clock = Clock()
        self.tree = bfts_reporting.TreeSearchReporter(self.report, clock=self.clock)
        self.stage1 = Stage("1_initial_implementation_1_preliminary", "preliminary", "goals", 4, 2, 1)
        os.environ.pop("SCIENTIST_STAGE", None)

    def test_stage_names_map_to_scientists(self):
        self.assertEqual(bfts_reporting.scientist_stage("1_initial_implementation_1_preliminary"), "Stage_1")
        self.assertEqual(bfts_reporting.scientist_stage("4_ablation_studies_2_more"), "Stage_4")
        self.assertIsNone(bfts_reporting.scientist_stage("fallback_stage"))
        self.assertIsNone(bfts_reporting.scientist_stage("7_extra"))

    def test_a_step_reports_progress_nodes_the_best_node_and_its_metric(self):
        draft = good("a", 0.5)
        buggy = Node("b", parent=draft, is_buggy=True, is_buggy_plots=None, metric=None, exc_type="ValueError")
        journal = Journal([draft, buggy])
        self.tree.enter_stage(self.stage1)
        self.clock.now += 60
        self.tree.step(self.stage1, journal)

        self.assertEqual(self.report.of("stage_started"), [(("Stage_1",), {"desc": "preliminary"})])
        self.assertEqual(os.environ["SCIENTIST_STAGE"], "Stage_1")
        self.assertEqual(self.report.current_stage, "Stage_1")
        nodes = [(args, kwargs) for args, kwargs in self.report.of("node")]
        self.assertEqual([args for args, _ in nodes],
                         [("a", "created"), ("a", "completed"), ("b", "created"), ("b", "completed"),
                          ("a", "selected_best")])
        completed_b = nodes[3][1]
        self.assertEqual(completed_b["parent_id"], "a")
        self.assertTrue(completed_b["is_buggy"])
        self.assertEqual(completed_b["exc_type"], "ValueError")
        completed_a = nodes[1][1]
        self.assertEqual(completed_a["metric"], {"value": 0.5, "maximize": False})
        self.assertEqual(len(completed_a["summary"]), bfts_reporting.SUMMARY_CHARS)
        self.assertEqual(self.report.of("metric"), [(("metric", 0.5), {"step": 2, "stage": "Stage_1", "node_id": "a"})])
        ((args, progress),) = self.report.of("progress")
        self.assertEqual(args, ("Stage_1", 2, 4))
        self.assertEqual(progress["good_nodes"], 1)
        self.assertEqual(progress["buggy_nodes"], 1)
        self.assertEqual(progress["total_nodes"], 2)
        self.assertEqual(progress["best_metric"], "Metric↓(0.5000)")
        self.assertEqual(progress["eta_s"], 60.0, "30 s a step, two steps left")

    def test_later_steps_send_only_what_changed(self):
        draft = good("a", 0.5)
        journal = Journal([draft])
        self.tree.step(self.stage1, journal)
        self.report.calls.clear()
        journal.nodes.append(good("c", 0.3, parent=draft))
        self.tree.step(self.stage1, journal)
        self.assertEqual([args for args, _ in self.report.of("node")],
                         [("c", "created"), ("c", "completed"), ("c", "selected_best")])
        self.assertEqual(self.report.of("metric")[0][0], ("metric", 0.3))
        self.report.calls.clear()
        self.tree.step(self.stage1, journal)
        self.assertEqual(self.report.of("node"), [], "nothing changed")
        self.assertEqual(self.report.of("metric"), [])
        self.assertEqual(len(self.report.of("progress")), 1)

    def test_a_new_main_stage_ends_the_previous_one_and_sub_stages_do_not(self):
        self.tree.enter_stage(self.stage1)
        self.clock.now += 30
        self.tree.enter_stage(Stage("1_initial_implementation_2_more", "more", "g", 4, 0, 2))
        self.clock.now += 30
        self.tree.enter_stage(Stage("2_baseline_tuning_1_first_attempt", "first_attempt", "g", 6, 0, 3))
        self.clock.now += 5
        self.tree.finish()
        self.assertEqual(self.report.of("stage_started"), [(("Stage_1",), {"desc": "preliminary"}),
                                                           (("Stage_2",), {"desc": "first_attempt"})])
        self.assertEqual(self.report.of("stage_completed"), [(("Stage_1", 60.0), {}), (("Stage_2", 5.0), {})])

    def test_metrics_of_several_datasets_become_one_series_each(self):
        value = {"metric_names": [{"metric_name": "validation loss", "lower_is_better": True, "data": [
            {"dataset_name": "mnist", "final_value": 0.12, "best_value": 0.1},
            {"dataset_name": "cifar", "final_value": 0.4, "best_value": 0.38}]}]}
        node = Node("m", is_buggy=False, is_buggy_plots=False, metric=MetricValue(value, name=None))
        self.assertEqual(bfts_reporting.metric_points(node.metric),
                         [("validation loss/mnist", 0.12), ("validation loss/cifar", 0.4)])
        self.assertEqual(bfts_reporting.metric_points(MetricValue(float("nan"))), [])
        self.assertEqual(bfts_reporting.metric_json(node.metric)["value"], value)

    def test_a_broken_journal_is_reported_on_stderr_not_raised(self):
        import contextlib
        import io
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            self.tree.step(self.stage1, object())
        self.assertIn("cannot report a step of '1_initial_implementation_1_preliminary'", stderr.getvalue())


class Install(unittest.TestCase):
    def test_hooks_chain_the_callbacks_and_report_every_llm_call(self):
        class TokenTracker:
            def __init__(self):
                self.counts = {}

            def add_tokens(self, model, prompt_tokens, completion_tokens, reasoning_tokens, cached_tokens):
                self.counts[model] = self.counts.get(model, 0) + prompt_tokens + completion_tokens

        tracker = TokenTracker()
        their_steps = []
        stages = [Stage("1_initial_implementation_1_preliminary", "preliminary", "g", 2, 1, 1),
                  Stage("2_baseline_tuning_1_first_attempt", "first_attempt", "g", 2, 0, 2)]

        class AgentManager:
            """Runs each stage as AI-Scientist-v2's does: make its agent, step, call back."""

            def _create_agent_for_stage(self, stage):
                return "agent for " + stage.name

            def run(self, exec_callback, step_callback=None):
                for stage in stages:
                    agent = self._create_agent_for_stage(stage)
                    assert agent == "agent for " + stage.name
                    tracker.add_tokens("gpt-4o-2024-11-20", 1000, 200, 50, 600)
                    step_callback(stage, Journal([good(stage.name + "-n1", 0.4)]))

        report = RecordingReport()
        tree = bfts_reporting.install(report, agent_manager_class=AgentManager, tracker=tracker)
        self.assertIs(bfts_reporting.install(report, agent_manager_class=AgentManager, tracker=tracker), tree,
                      "installing twice hooks once")
        AgentManager().run(None, lambda stage, journal: their_steps.append(stage.name))
        tree.finish()

        self.assertEqual(their_steps, [stage.name for stage in stages], "their step_callback still runs")
        self.assertEqual(tracker.counts, {"gpt-4o-2024-11-20": 2400}, "their token count still runs")
        usage = report.of("llm_usage")
        self.assertEqual(usage, [(("gpt-4o-2024-11-20", 1000, 200), {"cached_tokens": 600, "reasoning_tokens": 50})] * 2)
        self.assertEqual([args[0] for args, _ in report.of("stage_started")], ["Stage_1", "Stage_2"])
        self.assertEqual([args[0] for args, _ in report.of("stage_completed")], ["Stage_1", "Stage_2"])
        self.assertEqual([args[0] for args, _ in report.of("progress")], ["Stage_1", "Stage_2"])
        self.assertEqual(tree.good_nodes, 1)
        os.environ.pop("SCIENTIST_STAGE", None)


if __name__ == "__main__":
    unittest.main()
