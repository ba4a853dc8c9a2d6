"""What a task hands to an upper estimator: the Scenario A reward problem and the Scenario B schedule problem."""
